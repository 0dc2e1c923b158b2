"""Presence transitions recorded by maintenance, and the fleet counted by presence.

The writer keeps each device's deadline (`device_presence.offline_after`, see
`service.ingest.statements.UPDATE_PRESENCE`); a device is offline from that instant on, whether
or not anything ran since. This module writes the `went_offline` events of deadlines that
passed, and counts devices by presence for the `telemetry_devices` gauges.

Guarantees:
* One `went_offline` per transition, at the exact deadline that passed (`created_at =
  offline_after`): `record_went_offline` marks the row (`offline_since = offline_after`) and
  inserts the event in one statement, and only rows not yet marked qualify, so two instances,
  or a pass racing the writer (which records a missing `went_offline` itself when the device
  comes back), never record it twice. Maintenance also runs it under `locks.MAINTENANCE`.
* Rows are locked in `device_id` order, as the writer locks them, so a pass and concurrent
  flushes cannot deadlock; a row the writer moved forward meanwhile is re-checked after its
  lock and left alone.
* Bounded: at most `batch_size` devices per statement (found through the pending-deadline
  index, `offline_since IS NULL`), at most `max_batches` statements per call, each its own
  transaction; a backlog is worked off over several rounds.
* The clock is the caller's (`now`), so tests move time without sleeping.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import asyncpg

PRESENCES = ("online", "offline", "never_seen", "revoked")

# A device's presence at $now, over `devices d LEFT JOIN device_presence p`. Revocation wins;
# a device without a heartbeat has never been seen; past its deadline it is offline even
# before the went_offline pass recorded it.
PRESENCE_SQL = """CASE
    WHEN d.credential_revoked_at IS NOT NULL THEN 'revoked'
    WHEN p.last_seen_at IS NULL THEN 'never_seen'
    WHEN p.offline_since IS NOT NULL OR p.offline_after <= {now} THEN 'offline'
    ELSE 'online'
END"""

BATCH_SIZE = 10_000
MAX_BATCHES = 10

_WENT_OFFLINE = """
WITH due AS (
    SELECT device_id FROM device_presence
    WHERE offline_since IS NULL AND offline_after <= $1
    ORDER BY device_id
    LIMIT $2
    FOR UPDATE
), marked AS (
    UPDATE device_presence p SET offline_since = p.offline_after
    FROM due
    WHERE p.device_id = due.device_id AND p.offline_since IS NULL AND p.offline_after <= $1
    RETURNING p.device_id, p.offline_after, p.last_seen_at, p.expected_interval_seconds
)
INSERT INTO device_events (device_id, event_type, details, created_at)
SELECT device_id, 'went_offline',
       jsonb_build_object('last_seen_at', last_seen_at, 'expected_interval_seconds',
                          expected_interval_seconds),
       offline_after
FROM marked
ORDER BY offline_after, device_id
"""

_COUNTS = f"""
SELECT {PRESENCE_SQL.format(now="$1")} AS presence, count(*) AS devices
FROM devices d LEFT JOIN device_presence p ON p.device_id = d.id
GROUP BY 1
"""


@dataclass(frozen=True, slots=True)
class PresencePass:
    """What one pass did: `went_offline` events recorded; `finished` False when `max_batches`
    ran full (more deadlines passed than one call records)."""

    went_offline: int
    finished: bool
    counts: dict[str, int] = field(default_factory=dict)


async def record_went_offline(
    conn: asyncpg.Connection,
    now: datetime | None = None,
    *,
    batch_size: int = BATCH_SIZE,
    max_batches: int = MAX_BATCHES,
) -> tuple[int, bool]:
    """Record `went_offline` for every device whose deadline passed by `now` (default: the
    database's clock); returns (events recorded, whether none is left)."""
    if now is None:
        now = await conn.fetchval("SELECT now()")
    recorded = 0
    for _ in range(max_batches):
        status = await conn.execute(_WENT_OFFLINE, now, batch_size)
        count = int(status.rsplit(" ", 1)[-1])
        recorded += count
        if count < batch_size:
            return recorded, True
    return recorded, False


async def count_by_presence(conn: asyncpg.Connection, now: datetime | None = None) -> dict[str, int]:
    """Devices per presence at `now` (default: the database's clock); every presence listed."""
    if now is None:
        now = await conn.fetchval("SELECT now()")
    counts = dict.fromkeys(PRESENCES, 0)
    for row in await conn.fetch(_COUNTS, now):
        counts[row["presence"]] = row["devices"]
    return counts


async def run_pass(
    conn: asyncpg.Connection, now: datetime | None = None, *, max_batches: int = MAX_BATCHES
) -> PresencePass:
    """The maintenance step: transitions recorded, then the fleet counted at the same `now`."""
    if now is None:
        now = await conn.fetchval("SELECT now()")
    recorded, finished = await record_went_offline(conn, now, max_batches=max_batches)
    return PresencePass(recorded, finished, await count_by_presence(conn, now))
