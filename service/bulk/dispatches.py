"""A bulk dispatch: one command to a selection of devices, its targets fixed when it is created.

Guarantees:
* **Selected once, in the database.** The selector (explicit ids, the device list's filters, or
  all) is resolved by one `INSERT … SELECT` into `bulk_dispatch_targets` in the creating
  transaction, with the device list's own conditions (`service.fleet.devices.selection`), so
  `target_count` is fixed at creation and never all targets pass through Python. Devices whose
  credential is revoked are not targeted (they cannot pull); explicit ids that name no device
  are refused (`UnknownDevices`), so a typo is not silently a smaller fleet.
* **Idempotent.** `request_id` is unique: a retry with the same action, payload and selector
  answers the stored bulk (`created=False`); with different ones it is a `BulkConflict`. Two
  concurrent creates of one `request_id` serialize on its unique index: one creates it, the
  other reads it.
* **One command per target, never two.** Each target's command has the request id
  `DERIVED_REQUEST_ID`: `{bulk request_id}:{device_id}`, or, when that would pass
  128 characters, `{bulk request_id}:{sha256 of the device id, hex}`. Commands are created by
  `expand_chunk`, `CHUNK` targets at a time in `device_id` order, through the dispatches' own
  statement (`MERGE_DISPATCHES`, pushes queued with them when FCM is configured), in the same
  transaction as the `expanded_through` mark it advances: a crash resumes after the last
  committed chunk, and a repeated chunk would create nothing (the keys are claimed `ON
  CONFLICT DO NOTHING`).
* **Cancel** (`cancel_bulk`): marks the bulk cancelled under its row lock (waiting for a chunk in
  progress, so none is created after it), then cancels its open commands `CHUNK` at a time
  through the cancel's own rule (`service.commands.acks.merge_acks`: forward only, one
  `command.cancelled` event each, racing acks decided by the row lock).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import msgspec

from service.audit.log import Actor, AuditAction, record
from service.commands import dispatches
from service.commands.acks import AckResult, AckRow, merge_acks
from service.commands.lifecycle import OPEN, CommandStatus
from service.commands.reads import SELECT_COMMAND_WITH_PUSH, command_with_push
from service.fleet import devices
from service.fleet.devices import DeviceFilter

# Targets per chunk: commands created, or cancelled, per transaction.
CHUNK = 5000
MAX_DEVICE_IDS = 10_000
REQUEST_ID_MAX = 128  # commands.request_id
BULK_REQUEST_ID_MAX = 48  # leaves room for ':' and a 64-character digest

# A target's command request id, in SQL over `b` (bulk_dispatches) and `t` (its targets).
DERIVED_REQUEST_ID = (
    f"CASE WHEN length(b.request_id) + 1 + length(t.device_id) <= {REQUEST_ID_MAX}"
    " THEN b.request_id || ':' || t.device_id"
    " ELSE b.request_id || ':' || encode(sha256(convert_to(t.device_id, 'UTF8')), 'hex') END"
)


@dataclass(frozen=True, slots=True)
class Selection:
    """Exactly one of: explicit `device_ids`, the device list's `filter`, or `all`."""

    device_ids: tuple[str, ...] | None = None
    filter: DeviceFilter | None = None
    all: bool = False


class BulkState(msgspec.Struct, frozen=True):
    """A bulk dispatch as stored: `status` is `creating` (commands still being created),
    `created` (every target has its command) or `cancelled`."""

    id: int
    request_id: str
    action: str
    payload: dict[str, Any] | None
    selector: dict[str, Any]
    target_count: int
    created_at: datetime
    created_by: str | None
    status: str
    expanded_at: datetime | None
    cancelled_at: datetime | None

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> BulkState:
        status = "cancelled" if row["cancelled_at"] else ("created" if row["expanded_at"] else "creating")
        stored = {name: row[name] for name in cls.__struct_fields__ if name not in ("created_by", "status")}
        return cls(**stored, created_by=row["created_by_name"], status=status)


@dataclass(frozen=True, slots=True)
class BulkCreated:
    created: bool
    bulk: BulkState


class BulkConflict(Exception):
    """The request id names a bulk with a different action, payload or selector."""


class UnknownDevices(Exception):
    def __init__(self, device_ids: Sequence[str]) -> None:
        super().__init__(device_ids)
        self.device_ids = tuple(device_ids)


_BULKS = """
SELECT b.id, b.request_id, b.action, b.payload, b.selector, b.target_count, b.created_at,
       b.expanded_at, b.cancelled_at, u.username AS created_by_name
FROM bulk_dispatches b LEFT JOIN users u ON u.id = b.created_by
"""
_SELECT_BULK = _BULKS + "WHERE b.{key} = $1"
_INSERT_BULK = """
INSERT INTO bulk_dispatches (request_id, action, payload, selector, target_count, created_by)
VALUES ($1, $2, $3, $4, 0, $5)
ON CONFLICT (request_id) DO NOTHING
RETURNING id
"""
_UNKNOWN_IDS = (
    "SELECT i FROM unnest($1::text[]) WITH ORDINALITY AS x(i, n)"
    " WHERE NOT EXISTS (SELECT 1 FROM devices d WHERE d.id = x.i) ORDER BY n LIMIT 10"
)
_TARGET_IDS = """
INSERT INTO bulk_dispatch_targets (bulk_id, device_id)
SELECT DISTINCT $2::bigint, d.id FROM devices d
WHERE d.id = ANY($1::text[]) AND d.credential_revoked_at IS NULL
"""
_SET_COUNT = "UPDATE bulk_dispatches SET target_count = $2 WHERE id = $1"


async def create_bulk(
    conn: asyncpg.Connection,
    request_id: str,
    action: str,
    payload: dict[str, Any] | None,
    selection: Selection,
    selector: dict[str, Any],
    created_by: int | None,
    by: Actor,
) -> BulkCreated:
    """Create the bulk and fix its targets, inside the caller's transaction; or find the one
    stored under `request_id` (raises `BulkConflict` if it differs, `UnknownDevices` for explicit
    ids that name no device). `selector` is the selection as the request spelled it (stored,
    shown, and compared on a retry); `selection` is what it means. A new bulk's audit row (`by`)
    is in the same transaction."""
    if not conn.is_in_transaction():
        raise RuntimeError("create_bulk needs the caller's transaction")
    bulk_id = await conn.fetchval(_INSERT_BULK, request_id, action, payload, selector, created_by)
    if bulk_id is None:
        stored = BulkState.from_row(await conn.fetchrow(_SELECT_BULK.format(key="request_id"), request_id))
        if (stored.action, stored.payload, stored.selector) != (action, payload, selector):
            raise BulkConflict(request_id)
        return BulkCreated(False, stored)
    if selection.device_ids is not None:
        unknown = await conn.fetch(_UNKNOWN_IDS, list(selection.device_ids))
        if unknown:
            raise UnknownDevices([r["i"] for r in unknown])
        status = await conn.execute(_TARGET_IDS, list(selection.device_ids), bulk_id)
    else:
        # The device list's conditions, presence judged at `$1` (now); `all` has none but the
        # revoked devices'.
        args: list[Any] = [datetime.now(UTC), bulk_id]
        where = ["d.credential_revoked_at IS NULL"]
        if selection.filter is not None:
            where += devices.selection(selection.filter, args)
        status = await conn.execute(
            "INSERT INTO bulk_dispatch_targets (bulk_id, device_id) SELECT $2::bigint, d.id"
            " FROM devices d LEFT JOIN device_presence p ON p.device_id = d.id"
            f" WHERE $1::timestamptz IS NOT NULL AND {' AND '.join(where)}",
            *args,
        )
    count = int(status.rsplit(" ", 1)[1])
    await conn.execute(_SET_COUNT, bulk_id, count)
    details = {"request_id": request_id, "action": action, "selector": selector, "target_count": count}
    if "device_ids" in selector:  # the targets are in bulk_dispatch_targets; the row stays small
        details["selector"] = {"device_ids": len(selector["device_ids"])}
    await record(conn, by, AuditAction.BULK_CREATE, f"bulk:{bulk_id}", details)
    stored = BulkState.from_row(await conn.fetchrow(_SELECT_BULK.format(key="id"), bulk_id))
    return BulkCreated(True, stored)


async def recent_bulks(conn: asyncpg.Connection, limit: int) -> list[BulkState]:
    """The newest bulks, newest first."""
    rows = await conn.fetch(_BULKS + "ORDER BY b.id DESC LIMIT $1", limit)
    return [BulkState.from_row(r) for r in rows]


async def bulk_by_id(conn: asyncpg.Connection, bulk_id: int) -> BulkState | None:
    row = await conn.fetchrow(_SELECT_BULK.format(key="id"), bulk_id)
    return None if row is None else BulkState.from_row(row)


# --- creating the commands ----------------------------------------------------------------------

# The next bulk still creating commands, locked for this chunk (another instance skips it).
_CLAIM = (
    "SELECT id FROM bulk_dispatches WHERE expanded_at IS NULL AND cancelled_at IS NULL"
    " ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED"
)
# The chunk's targets after the mark, staged as dispatch rows for `MERGE_DISPATCHES`.
_STAGE_CHUNK = f"""
WITH chunk AS (
    SELECT t.device_id, {DERIVED_REQUEST_ID} AS request_id, b.action, b.payload, b.created_by
    FROM bulk_dispatches b JOIN bulk_dispatch_targets t ON t.bulk_id = b.id
    WHERE b.id = $1 AND (b.expanded_through IS NULL OR t.device_id > b.expanded_through)
    ORDER BY t.device_id
    LIMIT $2
), staged AS (
    INSERT INTO {dispatches.STAGE.table} (ord, request_id, device_id, action, payload, sent_at, created_by)
    SELECT (row_number() OVER (ORDER BY device_id))::int - 1, request_id, device_id, action,
           payload, now(), created_by
    FROM chunk
    RETURNING device_id
)
SELECT count(*) AS n, max(device_id) AS last FROM staged
"""
_MARK = (
    "UPDATE bulk_dispatches SET expanded_through = coalesce($2, expanded_through),"
    " expanded_at = CASE WHEN $3 THEN now() END WHERE id = $1"
)


@dataclass(frozen=True, slots=True)
class Chunk:
    bulk_id: int
    targets: int  # targets this chunk created commands for
    done: bool  # the bulk's last chunk


async def expand_chunk(
    conn: asyncpg.Connection, *, push_ttl: timedelta | None, chunk: int = CHUNK
) -> Chunk | None:
    """Create the commands of the next `chunk` targets of one bulk still creating, in one
    transaction with its mark (on a connection with the dispatches' staging table, as the
    service's pool prepares every connection); None when no bulk is left to expand (or all are being expanded
    by other instances)."""
    async with conn.transaction():
        bulk_id = await conn.fetchval(_CLAIM)
        if bulk_id is None:
            return None
        staged = await conn.fetchrow(_STAGE_CHUNK, bulk_id, chunk)
        if staged["n"]:
            if push_ttl is None:
                await conn.execute(dispatches.MERGE_DISPATCHES)
            else:
                await conn.execute(dispatches.MERGE_DISPATCHES_WITH_PUSHES, push_ttl)
        done = staged["n"] < chunk
        await conn.execute(_MARK, bulk_id, staged["last"], done)
    return Chunk(bulk_id, staged["n"], done)


# --- progress -----------------------------------------------------------------------------------

# A target's command: the one with its derived request id, for its own device.
_TARGET_COMMANDS = f"""
FROM bulk_dispatches b
JOIN bulk_dispatch_targets t ON t.bulk_id = b.id
JOIN commands c ON c.request_id = {DERIVED_REQUEST_ID} AND c.device_id = t.device_id
"""
_COUNTS = f"""
SELECT c.status, coalesce(p.status, 'not_configured') AS push, count(*) AS n
{_TARGET_COMMANDS}
LEFT JOIN command_pushes p ON p.id = c.id AND p.device_id = c.device_id
WHERE b.id = $1
GROUP BY 1, 2
"""
_PAGE = f"""
SELECT t.device_id, {DERIVED_REQUEST_ID} AS request_id
FROM bulk_dispatches b JOIN bulk_dispatch_targets t ON t.bulk_id = b.id
WHERE b.id = $1 AND ($2::text IS NULL OR t.device_id > $2)
ORDER BY t.device_id
LIMIT $3
"""


class BulkCounts(msgspec.Struct, frozen=True):
    """Counts of the bulk's created commands: by command status and by push status."""

    created: int
    by_status: dict[str, int]
    by_push_status: dict[str, int]


async def bulk_counts(conn: asyncpg.Connection, bulk_id: int) -> BulkCounts:
    by_status: dict[str, int] = {}
    by_push: dict[str, int] = {}
    for r in await conn.fetch(_COUNTS, bulk_id):
        by_status[r["status"]] = by_status.get(r["status"], 0) + r["n"]
        by_push[r["push"]] = by_push.get(r["push"], 0) + r["n"]
    return BulkCounts(sum(by_status.values()), dict(sorted(by_status.items())), dict(sorted(by_push.items())))


async def bulk_page(
    conn: asyncpg.Connection, bulk_id: int, after: str | None, limit: int
) -> tuple[list[tuple[str, Any]], str | None]:
    """One page of targets in `device_id` order, each with its command (with its push), or None
    while its command is not created yet; and the `after` of the next page (None on the last)."""
    targets = await conn.fetch(_PAGE, bulk_id, after, limit + 1)
    more = len(targets) > limit
    targets = targets[:limit]
    rows = await conn.fetch(
        f"{SELECT_COMMAND_WITH_PUSH} WHERE request_id = ANY($1::text[])", [t["request_id"] for t in targets]
    )
    by_id = {(r["request_id"], r["device_id"]): command_with_push(r) for r in rows}
    page = [(t["device_id"], by_id.get((t["request_id"], t["device_id"]))) for t in targets]
    return page, (targets[-1]["device_id"] if more else None)


# --- cancel -------------------------------------------------------------------------------------

_MARK_CANCELLED = """
UPDATE bulk_dispatches SET cancelled_at = coalesce(cancelled_at, now()) WHERE id = $1
RETURNING cancelled_at
"""
_LOCK = "SELECT id FROM bulk_dispatches WHERE id = $1 FOR UPDATE"
_OPEN_CHUNK = f"""
SELECT t.device_id, c.request_id
{_TARGET_COMMANDS}
WHERE b.id = $1 AND ($2::text IS NULL OR t.device_id > $2)
  AND {CommandStatus.sql_in("c.status", OPEN)}
ORDER BY t.device_id
LIMIT $3
"""


@dataclass(frozen=True, slots=True)
class BulkCancelled:
    cancelled: int  # open commands this cancel closed
    bulk: BulkState


async def cancel_bulk(
    pool: asyncpg.Pool, bulk_id: int, *, by: Actor, chunk: int = CHUNK
) -> BulkCancelled | None:
    """Stop creating the bulk's commands and cancel its open ones (None: no such bulk); the
    audit row is committed with the mark, before the commands are cancelled."""
    async with pool.acquire() as conn:
        name = by.operator
        async with conn.transaction():
            if await conn.fetchval(_LOCK, bulk_id) is None:  # waits for a chunk being created
                return None
            await conn.execute(_MARK_CANCELLED, bulk_id)
            await record(conn, by, AuditAction.BULK_CANCEL, f"bulk:{bulk_id}")
        cancelled = 0
        after: str | None = None
        while True:
            async with conn.transaction():
                rows = await conn.fetch(_OPEN_CHUNK, bulk_id, after, chunk)
                if not rows:
                    break
                moves = [
                    AckRow(r["request_id"], r["device_id"], CommandStatus.CANCELLED, None, None, None, name)
                    for r in rows
                ]
                outcomes = await merge_acks(conn, moves)
                cancelled += sum(o.result is AckResult.CHANGED for o in outcomes)
            after = rows[-1]["device_id"]
        bulk = await bulk_by_id(conn, bulk_id)
    assert bulk is not None
    return BulkCancelled(cancelled, bulk)
