"""Retention windows per time-series table: which storage mode runs them, read them, change them.

Where a window lives:
* timescale: in the table's one TimescaleDB retention job (`policy_retention`); that is what the
  database enforces. `retention_policies` mirrors it for readers that do not know Timescale.
* postgres: in `retention_policies`, which every service instance's partition maintenance reads
  at each round, so all instances agree without sharing configuration files.

`set_window` changes both in one transaction, serialized per table, so concurrent `set`s cannot
leave two retention jobs or a job and a row that disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import asyncpg

from service.db import locks, storage_mode
from service.db.rollups import check_guard
from service.db.storage_mode import StorageModeError, decide
from service.db.time_series import BY_NAME, TIME_SERIES_TABLES, TimeSeriesTable, coverage
from service.retention.audit import AUDIT_TABLES
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


class UnknownTableError(ValueError):
    """The name is not one of the time-series tables; the message lists the valid ones."""


class SchemaNotReadyError(RuntimeError):
    """The database has no time-series tables yet (not migrated)."""


@dataclass(frozen=True, slots=True)
class TablePolicy:
    """A table's retention as the database enforces it right now."""

    table: TimeSeriesTable
    window: timedelta
    # The chunk (timescale) or partition (postgres) interval new ranges are created with.
    interval: timedelta
    # The table's TimescaleDB retention job; None in postgres mode, or if the job was removed.
    job_id: int | None


def resolve_table(name: str) -> TimeSeriesTable:
    try:
        return BY_NAME[name]
    except KeyError:
        valid = ", ".join([t.name for t in TIME_SERIES_TABLES] + [t.name for t in AUDIT_TABLES])
        raise UnknownTableError(f"unknown table {name!r}: retention applies to {valid}") from None


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


async def read_policy(conn: asyncpg.Connection, mode: StorageMode, table: TimeSeriesTable) -> TablePolicy:
    """The table's window and interval. A missing `retention_policies` row (only possible by
    hand) reads as the table's defaults, which is what the migrations would have stored."""
    stored = await conn.fetchrow(_STORED, table.name)
    window = stored["drop_after"] if stored else table.default_window
    interval = stored["partition_interval"] if stored else table.chunk_interval
    job_id: int | None = None
    if mode == "timescale":
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
    table: TimeSeriesTable,
    window: timedelta,
    lookahead: timedelta,
) -> TablePolicy:
    """Make `window` the table's retention window, atomically.

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
    check_guard(table.name, window)  # GuardError: the rollup fed by it would lose rows
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
            interval = stored["partition_interval"] if stored else table.chunk_interval
            await conn.execute(ENSURE_PARTITIONS, table.name, interval, window, lookahead)
        await conn.execute(_UPSERT, table.name, window, interval)
        return await read_policy(conn, mode, table)
