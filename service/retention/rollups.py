"""Rollups at run time: which mechanism a database uses, where each rollup's watermark stands,
the table mechanism's incremental refresh, and the raw-data guard of partition retention.

Watermark: every bucket that starts before it is materialized. A continuous aggregate's is
TimescaleDB's own (`cagg_watermark`); a rollup table's is `rollup_watermarks.materialized_until`.

The table mechanism's refresh (`refresh_tables`, run by the maintenance task every round and by
`telemetry retention run`), per rollup in one transaction under a per-rollup advisory lock:

* `hi` is the end of the newest bucket that closed at least `end_offset` ago (the daily one
  also waits for the hourly watermark to pass the whole day);
* nothing happens unless `hi` is past the watermark (a new bucket closed);
* `lo` is the watermark minus `lookback` (so a late row for a recently closed bucket still
  counts: a heartbeat is rolled up if it arrives within `end_offset + lookback` after its
  bucket ends, two hours for the hourly rollup), or, the first time, the start of the source's
  oldest partition; never earlier than the source's oldest partition, so a refresh never
  re-reads a range whose rows are gone;
* the buckets in `[lo, hi)` are deleted and recomputed from the source, and the watermark moves
  to `hi` (forward only). Re-running a window therefore changes nothing: the result is a
  function of the source rows alone.

The guard (`drop_cutoff`): a partition of a rollup's source is dropped only once the rollup's
watermark minus its look-back has passed the partition's end, so no refresh reads it again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import EllipsisType

import asyncpg

from service.db import locks
from service.db.rollups import (
    BUILT_MECHANISM_SQL,
    DAILY_SELECT,
    FLEET_DAILY,
    HOURLY,
    ORIGIN,
    ROLLUP_OF_SOURCE,
    ROLLUPS,
    STATUSES,
    WATERMARKS,
    Rollup,
    RollupMechanism,
    hourly_select,
)

_HOURLY_COLUMNS = ", ".join(
    [
        "device_id",
        "hour",
        "heartbeats",
        "battery_min",
        "battery_avg",
        "battery_max",
        "battery_sum",
        *(f"status_{s}" for s in (*STATUSES, "other")),
        "last_app_version",
        "first_ts",
        "last_ts",
    ]
)

_RECOMPUTE = {
    HOURLY.name: f"""
INSERT INTO {HOURLY.name} ({_HOURLY_COLUMNS})
SELECT device_id, date_bin('1 hour', bucket_start, {ORIGIN}) AS hour,
{hourly_select("(array_agg(app_version ORDER BY ts DESC))[1]")}
FROM {HOURLY.source}
WHERE bucket_start >= $1 AND bucket_start < $2
GROUP BY 1, 2
""",
    FLEET_DAILY.name: f"""
INSERT INTO {FLEET_DAILY.name} (day, devices_seen, heartbeats, battery_sum, battery_avg)
SELECT date_bin('1 day', hour, {ORIGIN}) AS day,
{DAILY_SELECT}
FROM {FLEET_DAILY.source}
WHERE hour >= $1 AND hour < $2
GROUP BY 1
""",
}

_CAGG_WATERMARK = """
SELECT _timescaledb_functions.cagg_watermark(h.id)
FROM timescaledb_information.continuous_aggregates c
JOIN _timescaledb_catalog.hypertable h
  ON h.schema_name = c.materialization_hypertable_schema
 AND h.table_name = c.materialization_hypertable_name
WHERE c.view_schema = current_schema() AND c.view_name = $1
"""

_REFRESH_JOB = """
SELECT min(job_id) FROM timescaledb_information.jobs
WHERE proc_name = 'policy_refresh_continuous_aggregate' AND hypertable_name = $1
"""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


async def read_mechanism(conn: asyncpg.Connection) -> RollupMechanism:
    return await conn.fetchval(BUILT_MECHANISM_SQL)


async def watermark(conn: asyncpg.Connection, mechanism: RollupMechanism, rollup: Rollup) -> datetime | None:
    """Every bucket starting before the result is materialized; None: nothing yet."""
    if mechanism == "rollup_table":
        return await conn.fetchval(
            f"SELECT materialized_until FROM {WATERMARKS} WHERE rollup = $1", rollup.name
        )
    micros = await conn.fetchval(_CAGG_WATERMARK, rollup.name)
    # An empty continuous aggregate reports the lowest representable time.
    if micros is None or micros < -(10**17):
        return None
    return _EPOCH + timedelta(microseconds=micros)


async def watermarks(conn: asyncpg.Connection, mechanism: RollupMechanism) -> dict[str, datetime | None]:
    return {r.name: await watermark(conn, mechanism, r) for r in ROLLUPS}


@dataclass(frozen=True, slots=True)
class RollupRefresh:
    """One rollup's refresh: buckets in [lo, hi) recomputed; `rows` written."""

    rollup: str
    lo: datetime | None = None
    hi: datetime | None = None
    rows: int = 0
    watermark: datetime | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class RefreshReport:
    refreshes: tuple[RollupRefresh, ...] = field(default_factory=tuple)

    @property
    def errors(self) -> list[str]:
        return [f"{r.rollup}: refresh failed: {r.error}" for r in self.refreshes if r.error]


async def _source_floor(conn: asyncpg.Connection, rollup: Rollup) -> datetime | None:
    return await conn.fetchval("SELECT min(range_start) FROM telemetry_partition_bounds($1)", rollup.source)


# Records how far a rollup is materialized (its callers never move it backwards).
_MOVE_WATERMARK = (
    f"INSERT INTO {WATERMARKS} (rollup, materialized_until, refreshed_at) VALUES ($1, $2, now())"
    " ON CONFLICT (rollup) DO UPDATE SET materialized_until = EXCLUDED.materialized_until,"
    " refreshed_at = now()"
)


async def _refresh_one(conn: asyncpg.Connection, rollup: Rollup) -> RollupRefresh:
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", locks.rollup(rollup.name))
        wm = await conn.fetchval(
            f"SELECT materialized_until FROM {WATERMARKS} WHERE rollup = $1 FOR UPDATE", rollup.name
        )
        hi = await conn.fetchval(
            f"SELECT date_bin($1::interval, now() - $2::interval, {ORIGIN})", rollup.bucket, rollup.end_offset
        )
        if rollup is FLEET_DAILY:
            hourly = await watermark(conn, "rollup_table", HOURLY)
            if hourly is None:
                return RollupRefresh(rollup.name, watermark=wm)
            hi = min(hi, await conn.fetchval(f"SELECT date_bin('1 day', $1::timestamptz, {ORIGIN})", hourly))
        floor = await _source_floor(conn, rollup)
        lo = floor if wm is None else wm - rollup.lookback
        if lo is not None and floor is not None:
            lo = max(lo, floor)
        # Nothing new closed since the last refresh: the look-back is re-read only when the
        # watermark moves, so a bucket is computed twice (once, then one bucket later), not
        # once per round.
        if lo is None or lo >= hi or (wm is not None and hi <= wm):
            new = wm if wm is not None and wm >= hi else hi
            await conn.execute(
                _MOVE_WATERMARK,
                rollup.name,
                new,
            )
            return RollupRefresh(rollup.name, watermark=new)
        await conn.execute(
            f"DELETE FROM {rollup.name} WHERE {rollup.time_column} >= $1 AND {rollup.time_column} < $2",
            lo,
            hi,
        )
        status = await conn.execute(_RECOMPUTE[rollup.name], lo, hi)
        new = hi if wm is None or hi > wm else wm
        await conn.execute(
            _MOVE_WATERMARK,
            rollup.name,
            new,
        )
        return RollupRefresh(rollup.name, lo=lo, hi=hi, rows=int(status.split()[-1]), watermark=new)


async def refresh_tables(conn: asyncpg.Connection) -> RefreshReport:
    """The table mechanism's refresh of every rollup, hourly first (the daily one reads it).
    Never raises for a database error: each rollup's result carries it."""
    results = []
    for rollup in ROLLUPS:
        try:
            results.append(await _refresh_one(conn, rollup))
        except asyncpg.PostgresError as exc:
            results.append(RollupRefresh(rollup.name, error=str(exc)))
    return RefreshReport(tuple(results))


async def refresh_now(conn: asyncpg.Connection, mechanism: RollupMechanism) -> RefreshReport:
    """Refresh every rollup now, within its policy: the table mechanism's round, or each
    continuous aggregate's refresh job run in the foreground (`CALL run_job`), so the window
    refreshed is the policy's own and never reaches past the guard."""
    if mechanism == "rollup_table":
        return await refresh_tables(conn)
    results = []
    for rollup in ROLLUPS:
        job_id = await conn.fetchval(_REFRESH_JOB, rollup.name)
        try:
            if job_id is None:
                raise RuntimeError("no refresh policy")
            await conn.execute(f"CALL run_job({int(job_id)})")
        except (asyncpg.PostgresError, RuntimeError) as exc:
            results.append(RollupRefresh(rollup.name, error=str(exc)))
            continue
        results.append(RollupRefresh(rollup.name, watermark=await watermark(conn, mechanism, rollup)))
    return RefreshReport(tuple(results))


# "Not given": read the mechanism from the database (`mechanism_or_none`).
UNREAD: EllipsisType = ...


async def drop_cutoff(
    conn: asyncpg.Connection,
    source: str,
    cutoff: datetime,
    *,
    assume_refreshed: bool = False,
    mechanism: RollupMechanism | EllipsisType | None = UNREAD,
) -> datetime:
    """The latest end a partition of `source` may have to be dropped now: the retention cutoff,
    held back (table mechanism) until the rollup fed by `source` has materialized past it plus
    its look-back. `assume_refreshed`: as if a refresh ran first (for a dry run's listing).
    `mechanism`: the one the caller read this round, if it did."""
    rollup = ROLLUP_OF_SOURCE.get(source)
    if rollup is None:
        return cutoff
    if mechanism is UNREAD:
        mechanism = await mechanism_or_none(conn)
    if mechanism != "rollup_table":
        return cutoff
    wm = await watermark(conn, "rollup_table", rollup)
    if assume_refreshed:
        hi = await conn.fetchval(
            f"SELECT date_bin($1::interval, now() - $2::interval, {ORIGIN})", rollup.bucket, rollup.end_offset
        )
        wm = hi if wm is None or hi > wm else wm
    if wm is None:
        # Nothing rolled up yet: keep everything.
        return datetime.min.replace(tzinfo=UTC)
    return min(cutoff, wm - rollup.lookback)


async def mechanism_or_none(conn: asyncpg.Connection) -> RollupMechanism | None:
    """The mechanism, or None before the rollups' migration."""
    if await conn.fetchval("SELECT to_regclass($1) IS NULL", WATERMARKS):
        return None
    return await read_mechanism(conn)
