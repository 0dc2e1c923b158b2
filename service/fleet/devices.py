"""The device list: filters, presence at one instant, keyset pages.

Guarantees:
* Pages are keyset pages, never offsets: ordered by `device_id` (unique, and devices are never
  renamed), a device present before the first page and after the last is on exactly one page,
  whatever heartbeats, enrollments or transitions happen while paging. For `presence=offline`
  the order is `offline_since` oldest first (then `device_id`); a device that comes back, or
  goes offline anew, while the list is paged moves to the end of that order or out of it.
* Presence is judged at one `now` per page (`service.fleet.presence.PRESENCE_SQL`): a device
  past its deadline is offline with `offline_since` = that deadline, whether or not the
  maintenance pass has recorded its `went_offline` yet (it records it at that same instant).
* "Offline" is read from two index range scans (recorded: `offline_since`; not yet recorded:
  `offline_after <= now` among the pending deadlines), never from a pass over the fleet.
* The cursor is opaque to clients (base64url JSON of the last row's key and the order it
  belongs to); a malformed one, or one from another order, is refused (`CursorError`).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import msgspec

from service.fleet.presence import PRESENCE_SQL
from service.fleet.tags import TAGGED_SQL

# Every column a DeviceSummary needs, over `devices d LEFT JOIN device_presence p`; $1 is now.
SUMMARY_COLUMNS = f"""
    d.id AS device_id, d.enrolled_at, d.credential_revoked_at IS NOT NULL AS credential_revoked,
    d.banned_at IS NOT NULL AS banned, p.last_seen_at, p.last_ts, p.last_status, p.last_battery_pct,
    p.last_app_version, p.last_network, p.expected_interval_seconds, p.offline_after,
    {PRESENCE_SQL.format(now="$1")} AS presence,
    CASE WHEN d.credential_revoked_at IS NULL AND p.last_seen_at IS NOT NULL
         THEN coalesce(p.offline_since, CASE WHEN p.offline_after <= $1 THEN p.offline_after END)
    END AS offline_since,
    ARRAY(SELECT t.tag FROM device_tags t WHERE t.device_id = d.id ORDER BY t.tag) AS tags
"""


class CursorError(ValueError):
    """The cursor is malformed or belongs to another order."""


@dataclass(frozen=True, slots=True)
class DeviceFilter:
    presence: str | None = None
    app_version: str | None = None
    status: str | None = None
    battery_below: int | None = None
    id_prefix: str | None = None
    tag: str | None = None


class _Cursor(msgspec.Struct, array_like=True, forbid_unknown_fields=True):
    order: str  # "id" or "offline"
    device_id: str
    since: datetime | None = None


def encode_cursor(order: str, device_id: str, since: datetime | None = None) -> str:
    raw = msgspec.json.encode(_Cursor(order, device_id, since))
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, order: str) -> _Cursor:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        decoded = msgspec.json.decode(raw, type=_Cursor)
    except (binascii.Error, ValueError, msgspec.DecodeError):
        raise CursorError("cursor is not one this service issued") from None
    if decoded.order != order or (order == "offline") != (decoded.since is not None):
        raise CursorError("cursor belongs to another listing (presence changes the order)")
    # What this service issues: an id as stored (no U+0000, at most 128 characters) and an
    # aware time that exists in UTC (year 1 at +14:00 does not), never one a query cannot bind.
    if "\x00" in decoded.device_id or len(decoded.device_id) > 128:
        raise CursorError("cursor is not one this service issued")
    if decoded.since is not None:
        if decoded.since.tzinfo is None:
            raise CursorError("cursor is not one this service issued")
        try:
            decoded.since = decoded.since.astimezone(UTC)
        except OverflowError:
            raise CursorError("cursor is not one this service issued") from None
    return decoded


def _like_prefix(prefix: str) -> str:
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _filters(f: DeviceFilter, args: list[Any]) -> list[str]:
    """SQL conditions on `d`/`p` for everything but presence; appends their arguments."""
    where: list[str] = []

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    if f.app_version is not None:
        where.append(f"p.last_app_version = {arg(f.app_version)}")
    if f.status is not None:
        where.append(f"p.last_status = {arg(f.status)}")
    if f.battery_below is not None:
        where.append(f"p.last_battery_pct < {arg(f.battery_below)}")
    if f.id_prefix is not None:
        where.append(f"d.id >= {arg(f.id_prefix)} AND d.id LIKE {arg(_like_prefix(f.id_prefix))}")
    if f.tag is not None:
        where.append(TAGGED_SQL.format(tag=arg(f.tag)))
    return where


def selection(f: DeviceFilter, args: list[Any]) -> list[str]:
    """SQL conditions on `d`/`p` for every filter of `f`, presence judged at `$1` (the caller's
    `now`, already `args[0]`); appends their arguments. The device list's and the bulk
    dispatch's selector's one rule (`service.commands.bulk`)."""
    where = _filters(f, args)
    if f.presence is not None:
        args.append(f.presence)
        where.append(f"{PRESENCE_SQL.format(now='$1')} = ${len(args)}")
    return where


async def list_devices(
    conn: asyncpg.Connection, f: DeviceFilter, limit: int, cursor: str | None, now: datetime
) -> tuple[list[asyncpg.Record], str | None]:
    """One page of devices and the cursor of the next (None on the last page)."""
    if f.presence == "offline":
        return await _list_offline(conn, f, limit, cursor, now)
    args: list[Any] = [now]
    where = selection(f, args)
    if cursor is not None:
        after = decode_cursor(cursor, "id")
        args.append(after.device_id)
        where.append(f"d.id > ${len(args)}")
    args.append(limit + 1)
    rows = await conn.fetch(
        f"SELECT {SUMMARY_COLUMNS} FROM devices d LEFT JOIN device_presence p ON p.device_id = d.id"
        f" WHERE {' AND '.join(where) or 'true'} ORDER BY d.id LIMIT ${len(args)}",
        *args,
    )
    if len(rows) <= limit:
        return list(rows), None
    return list(rows[:limit]), encode_cursor("id", rows[limit - 1]["device_id"])


async def _list_offline(
    conn: asyncpg.Connection, f: DeviceFilter, limit: int, cursor: str | None, now: datetime
) -> tuple[list[asyncpg.Record], str | None]:
    args: list[Any] = [now]
    where = ["d.credential_revoked_at IS NULL", *_filters(f, args)]
    recorded, pending = "", ""
    if cursor is not None:
        after = decode_cursor(cursor, "offline")
        args += [after.since, after.device_id]
        s, i = f"${len(args) - 1}", f"${len(args)}"
        recorded = f"AND (p.offline_since, p.device_id) > ({s}::timestamptz, {i}::text)"
        pending = f"AND (p.offline_after, p.device_id) > ({s}::timestamptz, {i}::text)"
    args.append(limit + 1)
    n = f"${len(args)}"
    common = " AND ".join(where)
    # Two index range scans, each already in (since, device_id) order, merged.
    rows = await conn.fetch(
        f"""
        SELECT * FROM (
            (SELECT {SUMMARY_COLUMNS} FROM device_presence p JOIN devices d ON d.id = p.device_id
             WHERE p.offline_since IS NOT NULL AND {common} {recorded}
             ORDER BY p.offline_since, p.device_id LIMIT {n})
            UNION ALL
            (SELECT {SUMMARY_COLUMNS} FROM device_presence p JOIN devices d ON d.id = p.device_id
             WHERE p.offline_since IS NULL AND p.offline_after <= $1 AND {common} {pending}
             ORDER BY p.offline_after, p.device_id LIMIT {n})
        ) offline
        ORDER BY offline_since, device_id LIMIT {n}
        """,
        *args,
    )
    if len(rows) <= limit:
        return list(rows), None
    last = rows[limit - 1]
    return list(rows[:limit]), encode_cursor("offline", last["device_id"], last["offline_since"])


async def device_row(conn: asyncpg.Connection, device_id: str, now: datetime) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"SELECT {SUMMARY_COLUMNS} FROM devices d LEFT JOIN device_presence p ON p.device_id = d.id"
        " WHERE d.id = $2",
        now,
        device_id,
    )
