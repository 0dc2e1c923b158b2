"""Test data at controlled times: rows in any time-series table, and the rule that says which go.

Times are anchored on the server's `now()`, never Python's clock. In postgres mode the
partitions the rows need are created first (a range-partitioned table refuses a row with no
partition); TimescaleDB creates chunks on demand.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import asyncpg

from service.db.retained import DISPATCHES, DOWNLOADS, EVENTS, HEARTBEATS, RetainedTable
from service.settings import StorageMode

# Chunks (TimescaleDB aligns them on the Unix epoch) and partitions (telemetry_ensure_partitions
# bins from 2000-01-01) fall on the same boundaries for every interval that divides a day.
ORIGIN = datetime(2000, 1, 1, tzinfo=UTC)

_INSERT = {
    HEARTBEATS.name: """
        INSERT INTO device_heartbeats (device_id, bucket_start, ts, status, battery_pct)
        SELECT 'dev-' || i, t, t, 'ok', 50 FROM unnest($1::timestamptz[]) WITH ORDINALITY u(t, i)
    """,
    DISPATCHES.name: """
        WITH k AS (
            INSERT INTO fcm_dispatch_keys (request_id, dispatch_id, sent_at)
            SELECT gen_random_uuid()::text, nextval('fcm_dispatches_id_seq'), t
            FROM unnest($1::timestamptz[]) u(t)
            RETURNING request_id, dispatch_id, sent_at
        )
        INSERT INTO fcm_dispatches (id, sent_at, request_id, device_id, action)
        SELECT dispatch_id, sent_at, request_id, 'dev', 'ping' FROM k
    """,
    DOWNLOADS.name: """
        INSERT INTO apk_download_events (ts, build_id, device_id, outcome)
        SELECT t, 'build-1', 'dev', 'ok' FROM unnest($1::timestamptz[]) u(t)
    """,
    EVENTS.name: """
        INSERT INTO events (device_id, occurred_at, type)
        SELECT 'dev', t, 'device.enrolled' FROM unnest($1::timestamptz[]) u(t)
    """,
}


async def server_now(conn: asyncpg.Connection) -> datetime:
    return await conn.fetchval("SELECT now()")


async def cover(
    conn: asyncpg.Connection, mode: StorageMode, table: RetainedTable, lo: datetime, hi: datetime
) -> None:
    """Postgres mode: create the partitions holding [lo, hi]. Timescale: nothing to do."""
    if mode == "postgres":
        await conn.execute(
            "SELECT telemetry_ensure_partitions($1, $2::interval, $3, $4)",
            table.name,
            table.chunk_interval,
            lo,
            hi,
        )


async def insert_at(
    conn: asyncpg.Connection, mode: StorageMode, table: RetainedTable, times: Sequence[datetime]
) -> None:
    """One row per time in `times` (dispatches with their idempotency keys)."""
    await cover(conn, mode, table, min(times), max(times))
    await conn.execute(_INSERT[table.name], list(times))


async def stored_times(conn: asyncpg.Connection, table: RetainedTable) -> list[datetime]:
    rows = await conn.fetch(f"SELECT {table.time_column} AS t FROM {table.name} ORDER BY 1")
    return [r["t"] for r in rows]


def range_of(t: datetime, interval: timedelta) -> tuple[datetime, datetime]:
    """The chunk/partition holding `t`: the interval-aligned range [start, end) around it."""
    start = ORIGIN + ((t - ORIGIN) // interval) * interval
    return start, start + interval


def expired(t: datetime, interval: timedelta, cutoff: datetime) -> bool:
    """The documented rule: a row goes when its whole range ends at or before the cutoff."""
    return range_of(t, interval)[1] <= cutoff


def spread(now: datetime, window: timedelta, interval: timedelta) -> list[datetime]:
    """Times from two intervals before the window's edge to two after, a third of an interval
    apart, plus the edge itself and the moments just either side of it."""
    edge = now - window
    times = [edge + k * interval / 3 for k in range(-6, 7)]
    times += [edge - timedelta(seconds=1), edge + timedelta(seconds=1)]
    return sorted(set(times))
