"""The fleet's recent days: the days `fleet_daily` has not closed yet, kept in
`fleet_daily_recent` so a fleet history is read from rollups alone.

`fleet_daily` materializes whole days only, a day after it ends (a continuous aggregate never
materializes a partial bucket; the table mechanism follows the same rule). Counting the devices
seen on the newest day at read time means `count(DISTINCT device_id)` over every device's
hourly rows since the daily watermark: up to 26 hours x the fleet, 300 ms at 10,000 devices.
`refresh_recent_days` computes those days instead, once per move of the hourly watermark, from
the same hourly rows with the same aggregate (`DAILY_SELECT`), so a day reads the same before
and after `fleet_daily` closes it.

Guarantees:
- After a refresh, the table holds exactly the days in `[daily watermark, hourly watermark)`,
  each computed from the hourly rows before the hourly watermark, which every row records as
  `covered_until`. Rows are replaced in one transaction: a reader sees the old set or the new.
- A refresh runs under the rollup's transaction lock (`locks.rollup`), so two instances or a
  concurrent `telemetry retention run` never interleave.
- Work is bounded: when the daily rollup has never been refreshed, only the last
  `FLEET_DAILY.start_offset` before the hourly watermark is computed (the daily refresh's own
  reach), not the hourly tier's whole window.
- Nothing is recomputed while the hourly watermark has not moved, unless the rows are older than
  the hourly refresh schedule (a refresh may rewrite materialized hours without moving it).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from service.db import locks
from service.db.buckets import bucket_start
from service.db.rollups import DAILY_SELECT, FLEET_DAILY, HOURLY, ORIGIN, RECENT_DAYS, RollupMechanism
from service.retention.rollups import watermark

_STATE = f"SELECT max(covered_until), min(computed_at) FROM {RECENT_DAYS}"

_COMPUTE = f"""
INSERT INTO {RECENT_DAYS} (day, devices_seen, heartbeats, battery_sum, battery_avg, covered_until)
SELECT day, devices_seen, heartbeats, battery_sum, battery_avg, $2::timestamptz FROM (
    SELECT date_bin('1 day', hour, {ORIGIN}) AS day,
{DAILY_SELECT}
    FROM {HOURLY.name}
    WHERE hour >= $1::timestamptz AND hour < $2::timestamptz
    GROUP BY 1
) days
"""


@dataclass(frozen=True, slots=True)
class RecentDays:
    """One refresh: the days `[lo, covered_until)` recomputed (`days` rows), or skipped."""

    lo: datetime | None
    covered_until: datetime | None
    days: int
    skipped: bool


async def refresh_recent_days(conn: asyncpg.Connection, mechanism: RollupMechanism) -> RecentDays:
    """Recompute `fleet_daily_recent` from the hourly rollup when its watermark moved."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", locks.rollup(RECENT_DAYS))
        hourly = await watermark(conn, mechanism, HOURLY)
        daily = await watermark(conn, mechanism, FLEET_DAILY)
        if hourly is None:
            await conn.execute(f"DELETE FROM {RECENT_DAYS}")
            return RecentDays(None, None, 0, skipped=False)
        lo = (
            daily
            if daily is not None
            else bucket_start(hourly - FLEET_DAILY.start_offset, int(FLEET_DAILY.bucket.total_seconds()))
        )
        covered, computed_at = await conn.fetchrow(_STATE)
        now: datetime = await conn.fetchval("SELECT now()")
        if covered == hourly and computed_at is not None and now - computed_at < HOURLY.schedule:
            # Only rows the daily rollup has closed since may need to go.
            await conn.execute(f"DELETE FROM {RECENT_DAYS} WHERE day < $1", lo)
            return RecentDays(lo, hourly, 0, skipped=True)
        await conn.execute(f"DELETE FROM {RECENT_DAYS}")
        if lo >= hourly:
            return RecentDays(lo, hourly, 0, skipped=False)
        status = await conn.execute(_COMPUTE, lo, hourly)
        return RecentDays(lo, hourly, int(status.split()[-1]), skipped=False)
