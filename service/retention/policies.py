"""Retention windows: the one module that reads and writes `retention_policies` at run time.

Every retained table of the registry (`service.db.retained`) has its window in a
`retention_policies` row (the migrations seed it with `service.db.time_series.store_window_sql`):
`read_window` and `stored_windows` read it, `set_window` changes it. For a time-series table
(hypertable or partitions) the window also lives in the database's own retention machinery:
* timescale: in the table's one TimescaleDB retention job (`policy_retention`); that is what the
  database enforces. `retention_policies` mirrors it for readers that do not know Timescale.
* postgres: in `retention_policies`, which every service instance's partition maintenance reads
  at each round, so all instances agree without sharing configuration files.

A plain table (`RetentionKind.ROW_EXPIRY`) has only the row (with a NULL `partition_interval`);
its rows are deleted by `service.retention.audit`. A rollup's window is set at migrate time
(`TELEMETRY_RETENTION_HOURLY_SECONDS`, `…_FLEET_DAILY_SECONDS`); `retention set` refuses it.

`set_window` changes both in one transaction, serialized per table, so concurrent `set`s cannot
leave two retention jobs or a job and a row that disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import asyncpg

from service.db import locks, storage_mode
from service.db.retained import BY_NAME, RetainedTable, RetentionKind, of_kind
from service.db.rollups import check_guard
from service.db.storage_mode import StorageModeError, decide
from service.db.time_series import TIME_SERIES_TABLES, coverage
from service.settings import ModeChoice, StorageMode

RETENTION_PROC = "policy_retention"

# Jobs of one hypertable in the current schema; ordered so that "the" job is the oldest one.
_RETENTION_JOBS = f"""
SELECT job_id, (config->>'drop_after')::interval AS drop_after
FROM timescaledb_information.jobs
WHERE proc_name = '{RETENTION_PROC}' AND hypertable_schema = current_schema() AND hypertable_name = $1
ORDER BY job_id
"""

_CHUNK_INTERVAL = """
SELECT time_interval FROM timescaledb_information.dimensions
WHERE hypertable_schema = current_schema() AND hypertable_name = $1 AND dimension_number = 1
"""

_STORED = "SELECT drop_after, partition_interval FROM retention_policies WHERE table_name = $1"
_WINDOW = "SELECT drop_after FROM retention_policies WHERE table_name = $1"
_ALL_STORED = "SELECT table_name, drop_after FROM retention_policies"

_UPSERT = """
INSERT INTO retention_policies (table_name, drop_after, partition_interval) VALUES ($1, $2, $3)
ON CONFLICT (table_name) DO UPDATE SET drop_after = EXCLUDED.drop_after, updated_at = now()
"""


_ADD_JOB = "SELECT add_retention_policy($1::regclass, drop_after => $2::interval)"

# Altering in place keeps the job's id, schedule and run history, and there is never a moment
# with zero or two jobs.
_ALTER_JOB = """
SELECT alter_job(job_id, config => jsonb_set(config, '{drop_after}', to_jsonb($2::interval)))
FROM timescaledb_information.jobs WHERE job_id = $1
"""

# Partitions covering [now - window, now + ahead]: the oldest one holds `now - window`, the
# oldest time a write may carry, so none of them is expired yet (`coverage` without slack).
ENSURE_PARTITIONS = f"""
SELECT telemetry_ensure_partitions($1, $2::interval, {coverage("$3::interval", "$4::interval")})
"""


# The tables `telemetry retention set` and `run TABLE` accept.
SETTABLE: tuple[RetainedTable, ...] = of_kind(RetentionKind.TIME_SERIES, RetentionKind.ROW_EXPIRY)


class UnknownTableError(ValueError):
    """The name is not a table whose window can be set; the message lists the valid ones."""


class SchemaNotReadyError(RuntimeError):
    """The database has no time-series tables yet (not migrated)."""


@dataclass(frozen=True, slots=True)
class TablePolicy:
    """A table's retention as the database enforces it right now."""

    table: RetainedTable
    window: timedelta
    # The chunk (timescale) or partition (postgres) interval new ranges are created with; None
    # for a plain table.
    interval: timedelta | None
    # The table's TimescaleDB retention job; None in postgres mode, or if the job was removed.
    job_id: int | None


def resolve_table(name: str) -> RetainedTable:
    """The settable retained table named `name`; `UnknownTableError` for any other name."""
    table = BY_NAME.get(name)
    if table is None or table not in SETTABLE:
        valid = ", ".join(t.name for t in SETTABLE)
        raise UnknownTableError(f"unknown table {name!r}: retention applies to {valid}")
    return table


async def stored_window(conn: asyncpg.Connection, table: RetainedTable) -> timedelta | None:
    """The table's `retention_policies` window; None when it has no row."""
    return await conn.fetchval(_WINDOW, table.name)


async def read_window(conn: asyncpg.Connection, table: RetainedTable) -> timedelta:
    """The stored window; the table's default when no row exists (only possible by hand, and
    what the migrations would have stored)."""
    stored = await stored_window(conn, table)
    return stored if stored is not None else table.default_window


async def stored_windows(db: asyncpg.Pool | asyncpg.Connection) -> dict[str, timedelta]:
    """Every `retention_policies` window, by table name (one statement)."""
    return {r["table_name"]: r["drop_after"] for r in await db.fetch(_ALL_STORED)}


async def detect_storage_mode(conn: asyncpg.Connection, forced: ModeChoice) -> StorageMode:
    """The mode the database was built in, checked against a forced one.

    Raises `SchemaNotReadyError` when the time-series tables do not exist, and
    `StorageModeError` when `forced` names the other mode than the one the tables were built in
    (retention commands for the wrong mode would fail half-way or do nothing).
    """
    probe = await storage_mode.probe(conn)
    if probe.built is None:
        raise SchemaNotReadyError("the database has no time-series tables: run `telemetry migrate upgrade`")
    mode = decide(probe, forced)
    if mode != probe.built:
        raise StorageModeError(
            f"the database was built in {probe.built} mode, but the storage mode is forced to {mode}"
        )
    return mode


async def read_policy(conn: asyncpg.Connection, mode: StorageMode, table: RetainedTable) -> TablePolicy:
    """The table's window and interval. A missing `retention_policies` row (only possible by
    hand) reads as the table's defaults, which is what the migrations would have stored."""
    stored = await conn.fetchrow(_STORED, table.name)
    window = stored["drop_after"] if stored else table.default_window
    interval = stored["partition_interval"] if stored else table.interval
    job_id: int | None = None
    if mode == "timescale" and table.kind is RetentionKind.TIME_SERIES:
        jobs = await conn.fetch(_RETENTION_JOBS, table.name)
        if jobs:
            job_id, window = jobs[0]["job_id"], jobs[0]["drop_after"]
        interval = await conn.fetchval(_CHUNK_INTERVAL, table.name) or interval
    return TablePolicy(table=table, window=window, interval=interval, job_id=job_id)


async def read_policies(conn: asyncpg.Connection, mode: StorageMode) -> list[TablePolicy]:
    return [await read_policy(conn, mode, table) for table in TIME_SERIES_TABLES]


async def set_window(
    conn: asyncpg.Connection,
    mode: StorageMode,
    table: RetainedTable,
    window: timedelta,
    lookahead: timedelta,
) -> TablePolicy:
    """Make `window` the table's retention window, atomically.

    A plain table (`ROW_EXPIRY`): its `retention_policies` row holds the new window. A rollup
    raises `UnknownTableError` (its window is a migrate-time setting).

    timescale: afterwards the table has exactly one retention job, at `window`: an existing job
    is altered in place (keeping its id, schedule and run history), a missing one is added, and
    any extra ones (only possible by hand) are deleted. postgres: the stored window changes and
    the partitions a write inside the new window needs are created now, so a longer window never
    waits for the next maintenance round. Both: `retention_policies` holds the new window.

    Raises `GuardError` (changing nothing) when the window is shorter than the refresh reach of
    the rollup fed by the table (`service.db.rollups`).
    """
    if window <= timedelta(0):
        raise ValueError("a retention window must be longer than zero")
    resolve_table(table.name)
    check_guard(table.name, window)  # GuardError: the rollup fed by it would lose rows
    if table.kind is RetentionKind.ROW_EXPIRY:
        await conn.execute(_UPSERT, table.name, window, None)
        return await read_policy(conn, mode, table)
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", locks.retention_policy(table.name))
        if mode == "timescale":
            jobs = await conn.fetch(_RETENTION_JOBS, table.name)
            if not jobs:
                await conn.execute(_ADD_JOB, table.name, window)
            else:
                for extra in jobs[1:]:
                    await conn.execute("SELECT delete_job($1)", extra["job_id"])
                await conn.execute(_ALTER_JOB, jobs[0]["job_id"], window)
            interval = await conn.fetchval(_CHUNK_INTERVAL, table.name) or table.chunk_interval
        else:
            stored = await conn.fetchrow(_STORED, table.name)
            interval = stored["partition_interval"] if stored else table.interval
            await conn.execute(ENSURE_PARTITIONS, table.name, interval, window, lookahead)
        await conn.execute(_UPSERT, table.name, window, interval)
        return await read_policy(conn, mode, table)
