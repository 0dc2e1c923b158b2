"""Reading the event log in an order a consumer can resume from: nothing skipped, nothing repeated.

Why not simply `id > after`: ids come from a sequence when a row is inserted, but transactions
commit in another order. A reader at id 10 may miss id 9 whose transaction commits a moment
later. So the feed pages by `(txid, id)`, the writing transaction's id then the event's, and
only over events whose transaction is older than every transaction still running
(`pg_snapshot_xmin(pg_current_snapshot())`): those have all committed or rolled back, and every
transaction that will commit later has a txid at or above that horizon, so it sorts after
everything already read. The horizon never moves back.

The ordering promise, then: each consumer sees every event once, in `(txid, id)` order, which
is commit order between transactions and id order within one (the events of one cause stay
together). `id` grows with insertion and deduplicates; `cursor` ("<txid>-<id>") is what to
resume from. The price: an event is visible once every transaction that started writing before
it has ended, so a long-running write transaction elsewhere (not ours: ours are short and
batched) delays the feed for as long as it runs.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

INT8_MAX = 2**63 - 1
_CURSOR = re.compile(r"\A(0|[1-9][0-9]{0,18})-(0|[1-9][0-9]{0,18})\Z")


@dataclass(frozen=True, slots=True, order=True)
class Cursor:
    """A position in the feed: after the event `(txid, id)`."""

    txid: int
    id: int

    def __str__(self) -> str:
        return f"{self.txid}-{self.id}"

    @classmethod
    def parse(cls, text: str) -> Cursor | None:
        """The cursor `text` spells ("<txid>-<id>", both 0..2^63-1), or None when malformed."""
        match = _CURSOR.match(text)
        if match is None:
            return None
        txid, id_ = int(match[1]), int(match[2])
        if txid > INT8_MAX or id_ > INT8_MAX:
            return None
        return cls(txid, id_)


START = Cursor(0, 0)


@dataclass(frozen=True, slots=True)
class StoredEvent:
    id: int
    txid: int
    type: str
    version: int
    occurred_at: datetime
    device_id: str | None
    payload: dict[str, Any]

    @classmethod
    def of(cls, row: asyncpg.Record) -> StoredEvent:
        """From a row of `events` (a fleet-wide event's `device_id` '' is None here)."""
        stored = {name: row[name] for name in ("id", "txid", "type", "version", "occurred_at", "payload")}
        return cls(**stored, device_id=row["device_id"] or None)

    @property
    def cursor(self) -> Cursor:
        return Cursor(self.txid, self.id)


@dataclass(frozen=True, slots=True)
class Page:
    events: list[StoredEvent]
    # Where the next read starts. Past the last event returned and, when the page was not full,
    # past every event visible now (filtered out or not), so a filtered reader does not rescan.
    next_cursor: Cursor
    complete: bool  # fewer than `limit` events: nothing more is visible right now


_HORIZON = "(pg_snapshot_xmin(pg_current_snapshot())::text)::bigint"

_PAGE = f"""
WITH horizon AS (SELECT {_HORIZON} AS xmin)
SELECT h.xmin, e.id, e.txid, e.type, e.version, e.occurred_at, e.device_id, e.payload
FROM horizon h LEFT JOIN LATERAL (
    SELECT id, txid, type, version, occurred_at, device_id, payload FROM events
    WHERE (txid, id) > ($1::bigint, $2::bigint) AND txid < h.xmin
      AND ($3::text[] IS NULL OR type = ANY($3::text[]))
      AND ($4::text IS NULL OR device_id = $4::text)
    ORDER BY txid, id
    LIMIT $5
) e ON true
"""

HEAD = f"SELECT {_HORIZON}"


async def read_page(
    conn: asyncpg.Connection,
    after: Cursor,
    limit: int,
    *,
    types: Sequence[str] | None = None,
    device_id: str | None = None,
) -> Page:
    """Up to `limit` visible events after `after`, in feed order."""
    rows = await conn.fetch(_PAGE, after.txid, after.id, list(types) if types else None, device_id, limit)
    events = [StoredEvent.of(r) for r in rows if r["id"] is not None]
    nxt = events[-1].cursor if events else after
    complete = len(events) < limit
    if complete:
        # Everything with txid below the horizon was visible to this read.
        nxt = max(nxt, Cursor(rows[0]["xmin"] - 1, INT8_MAX))
    return Page(events, nxt, complete)


async def head(conn: asyncpg.Connection) -> Cursor:
    """A cursor past every event visible now: a stream started here sees only what comes next."""
    return Cursor(await conn.fetchval(HEAD) - 1, INT8_MAX)


# The newest visible event, walking the (txid, id) index backwards from the horizon: an index
# probe, not a scan, whatever the log's size.
_LAST_EVENT = f"""
SELECT txid, id FROM events WHERE txid < (SELECT {_HORIZON}) ORDER BY txid DESC, id DESC LIMIT 1
"""


async def last_event(conn: asyncpg.Connection) -> Cursor | None:
    """The cursor of the newest visible event (None when the log is empty)."""
    row = await conn.fetchrow(_LAST_EVENT)
    return None if row is None else Cursor(row["txid"], row["id"])
