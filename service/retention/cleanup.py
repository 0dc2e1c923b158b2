"""Run retention now: drop the chunks/partitions past their window and expire dispatch keys.

The rule, the same in both modes: a chunk (timescale) or partition (postgres) is dropped once
its whole range is past the window, i.e. when `range_end <= now() - window`. A row at time `t`
therefore lives at least `window` (its range ends after `t`) and at most `window + interval`
after `t`, plus however long it takes until retention next runs.

* timescale: `CALL run_job(job_id)` runs the table's own retention job in the foreground, in
  the same transaction that listed and counted the chunks it is about to drop, so the report
  names exactly what went. TimescaleDB records only background runs in `job_stats`, so a
  foreground run does not change `show`'s "last run".
* postgres: `telemetry_drop_expired_partitions`, after counting under the same per-table
  advisory lock the partition functions take, so no other cleanup or maintenance round drops
  (or creates) a partition of that table in between: nothing is dropped or counted twice.

Rows are counted exactly (`count(*)` of each range right before it is dropped), not estimated:
this reads every expired range once, which is the price of a report operators can check.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from types import EllipsisType

import asyncpg

from service.db import locks
from service.db.retained import RetainedTable
from service.db.rollups import RollupMechanism
from service.db.time_series import (
    DISPATCH_KEY_CUTOFF_FUNCTION,
    DISPATCH_KEY_EXPIRE_FUNCTION,
    DISPATCH_KEY_EXPIRY_BATCH,
    DISPATCHES,
    PARTITION_SCHEMA,
)
from service.retention import rollups
from service.retention.policies import read_policy
from service.settings import StorageMode

# DROP TABLE on a partition locks its parent exclusively, and a DROP waiting for that lock
# blocks every write queued behind it: give up instead (the next round retries) rather than
# stall ingest behind a long-running query.
DROP_LOCK_TIMEOUT = "5s"

# Chunks with their ranges, as TimescaleDB reports them; `qualified` is safe to splice into SQL.
_CHUNKS = """
SELECT format('%I.%I', chunk_schema, chunk_name) AS qualified, range_start, range_end
FROM timescaledb_information.chunks
WHERE hypertable_schema = current_schema() AND hypertable_name = $1
ORDER BY range_start
"""

# telemetry_partition_bounds lists only the partitions in PARTITION_SCHEMA.
_PARTITIONS = f"""
SELECT format('%I.%I', '{PARTITION_SCHEMA}', partition_name) AS qualified, range_start, range_end
FROM telemetry_partition_bounds($1) ORDER BY range_start
"""

_DROP_EXPIRED = f"""
SELECT format('%I.%I', '{PARTITION_SCHEMA}', partition_name) AS qualified, range_start, range_end
FROM telemetry_drop_expired_partitions($1, $2)
"""


@dataclass(frozen=True, slots=True)
class TimeRange:
    """One chunk or partition of a time-series table."""

    name: str  # schema-qualified, quoted where needed: safe to splice into SQL
    range_start: datetime
    range_end: datetime


async def list_ranges(conn: asyncpg.Connection, mode: StorageMode, table: RetainedTable) -> list[TimeRange]:
    """The table's chunks (timescale) or partitions (postgres), oldest first."""
    rows = await conn.fetch(_CHUNKS if mode == "timescale" else _PARTITIONS, table.name)
    return [TimeRange(r["qualified"], r["range_start"], r["range_end"]) for r in rows]


class NoRetentionJobError(RuntimeError):
    """A hypertable has no retention job, so there is nothing to run."""


@dataclass(frozen=True, slots=True)
class DroppedRange:
    """One chunk or partition that was (or, in a dry run, would be) dropped."""

    name: str  # schema-qualified
    range_start: datetime
    range_end: datetime
    rows: int | None  # counted right before the drop; None when not counted


@dataclass(frozen=True, slots=True)
class TableCleanup:
    """What retention did to one table; `error` is set (and `dropped` empty) when it failed."""

    table: str
    mode: StorageMode
    dry_run: bool
    window: timedelta | None = None
    cutoff: datetime | None = None  # ranges ending at or before it go
    job_id: int | None = None
    dropped: tuple[DroppedRange, ...] = ()
    remaining: int | None = None  # chunks/partitions left afterwards
    seconds: float = 0.0
    error: str | None = None

    @property
    def rows(self) -> int | None:
        counts = [d.rows for d in self.dropped]
        return None if any(c is None for c in counts) else sum(c for c in counts if c is not None)


@dataclass(frozen=True, slots=True)
class KeyExpiry:
    """Dispatch idempotency keys expired (or, in a dry run, that would be)."""

    dry_run: bool
    cutoff: datetime | None = None  # keys sent before it expire; None: no dispatch window stored
    expired: int = 0
    complete: bool = True  # False: stopped at `max_batches`, more expired keys remain
    seconds: float = 0.0
    error: str | None = None


@dataclass(frozen=True, slots=True)
class CleanupReport:
    tables: tuple[TableCleanup, ...]
    keys: KeyExpiry | None
    rollups: rollups.RefreshReport | None = None  # the rollup tables' refresh, when it ran

    @property
    def ok(self) -> bool:
        refreshed = self.rollups is None or not self.rollups.errors
        return (
            refreshed
            and all(t.error is None for t in self.tables)
            and (self.keys is None or self.keys.error is None)
        )


async def _count(conn: asyncpg.Connection, qualified: str) -> int:
    return int(await conn.fetchval(f"SELECT count(*) FROM {qualified}"))


async def _clean_hypertable(
    conn: asyncpg.Connection, table: RetainedTable, dry_run: bool, count_rows: bool
) -> TableCleanup:
    policy = await read_policy(conn, "timescale", table)
    if policy.job_id is None:
        raise NoRetentionJobError(
            f"{table.name} has no retention job: create one with "
            f"`telemetry retention set {table.name} WINDOW`"
        )
    async with conn.transaction():
        # One transaction: now() below is the now() the job sees, so "expired" here is exactly
        # what the job drops (anything else that vanishes is reported with rows unknown).
        cutoff = await conn.fetchval("SELECT now() - $1::interval", policy.window)
        before = await conn.fetch(_CHUNKS, table.name)
        expired = [c for c in before if c["range_end"] <= cutoff]
        counts = {c["qualified"]: await _count(conn, c["qualified"]) for c in expired} if count_rows else {}
        if dry_run:
            gone, remaining = expired, len(before)
        else:
            await conn.execute("CALL run_job($1)", policy.job_id)
            after = {c["qualified"] for c in await conn.fetch(_CHUNKS, table.name)}
            gone = [c for c in before if c["qualified"] not in after]
            remaining = len(after)
    return TableCleanup(
        table=table.name,
        mode="timescale",
        dry_run=dry_run,
        window=policy.window,
        cutoff=cutoff,
        job_id=policy.job_id,
        dropped=tuple(
            DroppedRange(c["qualified"], c["range_start"], c["range_end"], counts.get(c["qualified"]))
            for c in gone
        ),
        remaining=remaining,
    )


async def _clean_partitions(
    conn: asyncpg.Connection,
    table: RetainedTable,
    dry_run: bool,
    count_rows: bool,
    mechanism: RollupMechanism | EllipsisType | None,
) -> TableCleanup:
    policy = await read_policy(conn, "postgres", table)
    async with conn.transaction():
        await conn.execute(f"SET LOCAL lock_timeout = '{DROP_LOCK_TIMEOUT}'")
        # The lock telemetry_drop_expired_partitions takes itself (advisory locks nest within a
        # session): held from the listing through the drop, so both see the same partitions.
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", locks.partitions(table.name))
        cutoff = await conn.fetchval("SELECT now() - $1::interval", policy.window)
        # The guard: a rollup's source is kept until the rollup has read it (a dry run assumes
        # the refresh that a real run does first).
        cutoff = await rollups.drop_cutoff(
            conn, table.name, cutoff, assume_refreshed=dry_run, mechanism=mechanism
        )
        before = await conn.fetch(_PARTITIONS, table.name)
        expired = [p for p in before if p["range_end"] <= cutoff]
        # Counted before the first DROP: each DROP locks the parent exclusively until commit.
        counts = {p["qualified"]: await _count(conn, p["qualified"]) for p in expired} if count_rows else {}
        if dry_run:
            gone = [(p["qualified"], p["range_start"], p["range_end"]) for p in expired]
        else:
            dropped = await conn.fetch(_DROP_EXPIRED, table.name, cutoff)
            gone = [(d["qualified"], d["range_start"], d["range_end"]) for d in dropped]
    return TableCleanup(
        table=table.name,
        mode="postgres",
        dry_run=dry_run,
        window=policy.window,
        cutoff=cutoff,
        dropped=tuple(DroppedRange(name, lo, hi, counts.get(name)) for name, lo, hi in gone),
        remaining=len(before) - (0 if dry_run else len(gone)),
    )


async def clean_table(
    conn: asyncpg.Connection,
    mode: StorageMode,
    table: RetainedTable,
    *,
    dry_run: bool = False,
    count_rows: bool = True,
    mechanism: RollupMechanism | EllipsisType | None = rollups.UNREAD,
) -> TableCleanup:
    """Drop (or, with `dry_run`, only list) the table's ranges past its window.

    Never raises for a database error: the result carries it in `error`, so that one table's
    failure does not stop the others. `count_rows=False` skips the row counts (rows None).
    `mechanism`: the rollups' mechanism when the caller read it already (the guard needs it).
    """
    started = time.perf_counter()
    try:
        if mode == "timescale":
            result = await _clean_hypertable(conn, table, dry_run, count_rows)
        else:
            result = await _clean_partitions(conn, table, dry_run, count_rows, mechanism)
    except (asyncpg.PostgresError, NoRetentionJobError) as exc:
        return TableCleanup(
            table=table.name,
            mode=mode,
            dry_run=dry_run,
            seconds=time.perf_counter() - started,
            error=str(exc),
        )
    return replace(result, seconds=time.perf_counter() - started)


async def expire_dispatch_keys(
    conn: asyncpg.Connection,
    *,
    dry_run: bool = False,
    batch_size: int = DISPATCH_KEY_EXPIRY_BATCH,
    max_batches: int | None = None,
) -> KeyExpiry:
    """Delete dispatch idempotency keys older than the dispatch window plus one dispatch interval
    (see `service.db.time_series`), in batches of `batch_size`, each its own transaction so that
    no step holds locks for long. Stops after `max_batches` (then `complete` is False) or when
    none are left. Never raises for a database error; the result carries it in `error`.
    """
    started = time.perf_counter()
    expired, batches, complete = 0, 0, True
    try:
        cutoff = await conn.fetchval(f"SELECT {DISPATCH_KEY_CUTOFF_FUNCTION}()")
        if dry_run:
            if cutoff is not None:
                expired = await conn.fetchval(
                    "SELECT count(*) FROM fcm_dispatch_keys WHERE sent_at < $1", cutoff
                )
        elif cutoff is not None:
            while True:
                if max_batches is not None and batches >= max_batches:
                    complete = False
                    break
                deleted = await conn.fetchval(f"SELECT {DISPATCH_KEY_EXPIRE_FUNCTION}($1)", batch_size)
                expired += deleted
                batches += 1
                if deleted < batch_size:
                    break
    except asyncpg.PostgresError as exc:
        seconds = time.perf_counter() - started
        return KeyExpiry(dry_run=dry_run, expired=expired, seconds=seconds, error=str(exc))
    seconds = time.perf_counter() - started
    return KeyExpiry(dry_run=dry_run, cutoff=cutoff, expired=expired, complete=complete, seconds=seconds)


async def run_cleanup(
    conn: asyncpg.Connection,
    mode: StorageMode,
    tables: list[RetainedTable],
    *,
    dry_run: bool = False,
    count_rows: bool = True,
) -> CleanupReport:
    """Retention now for `tables`, one after another, and dispatch-key expiry when the dispatch
    table is among them. A failure of one step is reported and the others still run.
    With rollup tables (postgres mode) the rollups are refreshed first, so that the guard lets
    go of every source partition they have read."""
    refresh = None
    mechanism = await rollups.mechanism_or_none(conn)
    if not dry_run and mechanism == "rollup_table":
        refresh = await rollups.refresh_tables(conn)
    results = []
    for table in tables:
        results.append(
            await clean_table(conn, mode, table, dry_run=dry_run, count_rows=count_rows, mechanism=mechanism)
        )
    keys = await expire_dispatch_keys(conn, dry_run=dry_run) if DISPATCHES in tables else None
    return CleanupReport(tables=tuple(results), keys=keys, rollups=refresh)
