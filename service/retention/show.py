"""`telemetry retention show`: per time-series and audit table, how retention is set up and where it stands.

How long data can outlive its window (`max_overshoot`): retention drops whole chunks or
partitions once their whole range is past the window, and only when it runs. A row at time `t`
sits in a range ending at most one interval after `t`, and the range is dropped at the first run
after that end plus the window, so a row can outlive its window by up to one interval plus one
schedule period.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TextIO

import asyncpg

from service.db.retained import RetainedTable
from service.db.time_series import (
    DISPATCH_KEY_CUTOFF_FUNCTION,
    DISPATCH_KEY_EXPIRY_PROCEDURE,
    TIME_SERIES_TABLES,
)
from service.db.windows import format_window
from service.retention import audit
from service.retention.cleanup import list_ranges
from service.retention.policies import read_policy, read_window
from service.settings import Settings, StorageMode

# The message of a job's latest failed run (`timescaledb_information.job_errors`), over `j`.
LAST_ERROR = """(SELECT e.err_message FROM timescaledb_information.job_errors e
        WHERE e.job_id = j.job_id ORDER BY e.finish_time DESC NULLS LAST LIMIT 1) AS last_error"""

_JOB = f"""
SELECT j.job_id, j.schedule_interval, j.scheduled, j.next_start,
       s.last_run_started_at, s.last_run_status, s.job_status,
       {LAST_ERROR}
FROM timescaledb_information.jobs j
LEFT JOIN timescaledb_information.job_stats s ON s.job_id = j.job_id
WHERE j.job_id = $1
"""


@dataclass(frozen=True, slots=True)
class JobStatus:
    """A TimescaleDB job as `timescaledb_information.jobs`/`job_stats` report it. Only
    background runs are recorded there; `CALL run_job` (and so `retention run`) is not."""

    job_id: int
    schedule: timedelta
    scheduled: bool
    last_run: datetime | None
    last_status: str | None
    next_run: datetime | None
    last_error: str | None = None


@dataclass(frozen=True, slots=True)
class TableStatus:
    table: str
    mode: StorageMode
    window: timedelta
    interval: timedelta  # chunk (timescale) or partition (postgres) interval
    # How often retention runs: the job's schedule, or the service's maintenance interval.
    schedule: timedelta | None
    job: JobStatus | None  # timescale only
    ranges: int  # chunks or partitions
    oldest_row: datetime | None

    @property
    def max_overshoot(self) -> timedelta | None:
        """How long a row can outlive the window; None when nothing runs retention."""
        return None if self.schedule is None else self.interval + self.schedule


@dataclass(frozen=True, slots=True)
class KeyStatus:
    """The dispatch idempotency keys (`fcm_dispatch_keys`) and their expiry."""

    mode: StorageMode
    keys: int
    oldest: datetime | None
    expire_after: timedelta | None  # None: expiry not installed or no dispatch window stored
    schedule: timedelta | None
    job: JobStatus | None


async def _job(conn: asyncpg.Connection, job_id: int | None) -> JobStatus | None:
    if job_id is None:
        return None
    row = await conn.fetchrow(_JOB, job_id)
    if row is None:
        return None
    return JobStatus(
        job_id=row["job_id"],
        schedule=row["schedule_interval"],
        scheduled=row["scheduled"],
        last_run=row["last_run_started_at"],
        last_status=row["last_run_status"],
        next_run=row["next_start"] if row["scheduled"] else None,
        last_error=row["last_error"],
    )


async def _oldest_row(conn: asyncpg.Connection, mode: StorageMode, table: RetainedTable) -> datetime | None:
    # Oldest range first, stopping at the first that holds a row: a table-wide min() would scan
    # every range (there is no index leading with the time column); this scans one, typically.
    for r in await list_ranges(conn, mode, table):
        oldest = await conn.fetchval(f"SELECT min({table.time_column}) FROM {r.name}")
        if oldest is not None:
            return oldest
    return None


async def table_status(
    conn: asyncpg.Connection, mode: StorageMode, table: RetainedTable, settings: Settings
) -> TableStatus:
    policy = await read_policy(conn, mode, table)
    if mode == "timescale":
        job = await _job(conn, policy.job_id)
        schedule = job.schedule if job is not None and job.scheduled else None
    else:
        # The schedule of the service's maintenance as this process's configuration says;
        # instances configured otherwise run on their own interval.
        job, schedule = None, settings.maintenance_interval
    return TableStatus(
        table=table.name,
        mode=mode,
        window=policy.window,
        interval=policy.interval,
        schedule=schedule,
        job=job,
        ranges=len(await list_ranges(conn, mode, table)),
        oldest_row=await _oldest_row(conn, mode, table),
    )


async def key_status(conn: asyncpg.Connection, mode: StorageMode, settings: Settings) -> KeyStatus:
    installed = await conn.fetchval("SELECT to_regproc($1) IS NOT NULL", DISPATCH_KEY_CUTOFF_FUNCTION)
    expire_after = (
        await conn.fetchval(f"SELECT now() - {DISPATCH_KEY_CUTOFF_FUNCTION}()") if installed else None
    )
    job: JobStatus | None = None
    schedule: timedelta | None = None
    if mode == "timescale":
        job_id = await conn.fetchval(
            "SELECT min(job_id) FROM timescaledb_information.jobs WHERE proc_name = $1",
            DISPATCH_KEY_EXPIRY_PROCEDURE,
        )
        job = await _job(conn, job_id)
        schedule = job.schedule if job is not None and job.scheduled else None
    elif installed:
        schedule = settings.maintenance_interval
    row = await conn.fetchrow("SELECT count(*) AS keys, min(sent_at) AS oldest FROM fcm_dispatch_keys")
    return KeyStatus(
        mode=mode,
        keys=row["keys"],
        oldest=row["oldest"],
        expire_after=expire_after,
        schedule=schedule,
        job=job,
    )


async def collect(
    conn: asyncpg.Connection, mode: StorageMode, settings: Settings
) -> tuple[list[TableStatus], KeyStatus]:
    tables = [await table_status(conn, mode, t, settings) for t in TIME_SERIES_TABLES]
    return tables, await key_status(conn, mode, settings)


@dataclass(frozen=True, slots=True)
class AuditStatus:
    """An audit table (expired row by row by the service's maintenance task)."""

    table: str
    window: timedelta
    schedule: timedelta
    rows: int
    oldest_row: datetime | None


async def collect_audit(conn: asyncpg.Connection, settings: Settings) -> list[AuditStatus]:
    return [
        AuditStatus(
            table=t.name,
            window=await read_window(conn, t),
            schedule=settings.maintenance_interval,
            rows=await audit.row_count(conn, t),
            oldest_row=await audit.oldest_row(conn, t),
        )
        for t in audit.AUDIT_TABLES
    ]


def audit_fields(status: AuditStatus) -> list[tuple[str, str]]:
    return [
        ("window", format_window(status.window)),
        ("expired by", "service maintenance (batched DELETE), both modes"),
        ("schedule", f"every {format_window(status.schedule)}"),
        ("max overshoot", f"{format_window(status.schedule)} (schedule)"),
        ("rows", str(status.rows)),
        ("oldest row", format_time(status.oldest_row)),
    ]


# --- rendering --------------------------------------------------------------------------------


def format_time(value: datetime | None) -> str:
    return "-" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _job_fields(job: JobStatus | None, mode: StorageMode) -> dict[str, str]:
    if mode == "postgres":
        return {
            "job": "service partition maintenance",
            "last run": "- (not recorded; see the service log)",
            "last status": "-",
            "last error": "-",
            "next run": "-",
        }
    if job is None:
        return {
            "job": "none: nothing drops old data",
            "last run": "-",
            "last status": "-",
            "last error": "-",
            "next run": "-",
        }
    return {
        "job": str(job.job_id),
        "last run": format_time(job.last_run) if job.last_run else "never (background)",
        "last status": job.last_status or "-",
        "last error": (job.last_error or "-") if job.last_status == "Failed" else "-",
        "next run": format_time(job.next_run) if job.scheduled else "paused",
    }


def table_fields(status: TableStatus) -> list[tuple[str, str]]:
    """(label, value) pairs, in display order."""
    unit = "chunks" if status.mode == "timescale" else "partitions"
    overshoot = status.max_overshoot
    job_fields = _job_fields(status.job, status.mode)
    return [
        ("mode", status.mode),
        ("window", format_window(status.window)),
        ("interval", format_window(status.interval)),
        (
            "max overshoot",
            "unbounded (retention does not run)"
            if overshoot is None
            else f"{format_window(overshoot)} (interval + schedule)",
        ),
        ("job", job_fields["job"]),
        ("schedule", "-" if status.schedule is None else f"every {format_window(status.schedule)}"),
        ("last run", job_fields["last run"]),
        ("last status", job_fields["last status"]),
        ("last error", job_fields["last error"]),
        ("next run", job_fields["next run"]),
        (unit, str(status.ranges)),
        ("oldest row", format_time(status.oldest_row)),
    ]


def key_fields(status: KeyStatus) -> list[tuple[str, str]]:
    if status.expire_after is None:
        expiry = "not installed (run `telemetry migrate upgrade`)"
    else:
        expiry = f"older than {format_window(status.expire_after)} (dispatch window + interval)"
    if status.mode == "timescale":
        job = "none: keys never expire" if status.job is None else str(status.job.job_id)
    else:
        job = "service partition maintenance"
    return [
        ("keys", str(status.keys)),
        ("oldest key", format_time(status.oldest)),
        ("expire", expiry),
        ("job", job),
        ("schedule", "-" if status.schedule is None else f"every {format_window(status.schedule)}"),
    ]


def render_plain(
    tables: Sequence[TableStatus], keys: KeyStatus, out: TextIO, audits: Sequence[AuditStatus] = ()
) -> None:
    """One block per table, `label  value` lines: stable for scripts and grep."""
    blocks = [(t.table, table_fields(t)) for t in tables] + [("fcm_dispatch_keys", key_fields(keys))]
    blocks += [(a.table, audit_fields(a)) for a in audits]
    width = max(len(label) for _, fields in blocks for label, _ in fields)
    for i, (name, fields) in enumerate(blocks):
        if i:
            print(file=out)
        print(name, file=out)
        for label, value in fields:
            print(f"  {label:<{width}}  {value}", file=out)


def render_rich(
    tables: Sequence[TableStatus], keys: KeyStatus, out: TextIO, audits: Sequence[AuditStatus] = ()
) -> None:
    """A table per section, one column per time-series table, for a terminal."""
    from rich.console import Console
    from rich.table import Table

    def by_column(title: str, names: Sequence[str], columns: Sequence[Sequence[tuple[str, str]]]) -> Table:
        """One column per name, one row per label (every column has the same labels)."""
        grid = Table(title=title, show_lines=False)
        grid.add_column("", style="bold")
        for name in names:
            grid.add_column(name)
        for i, (label, _) in enumerate(columns[0]):
            grid.add_row(label, *(fields[i][1] for fields in columns))
        return grid

    console = Console(file=out)
    # "chunks"/"partitions" is the one label that depends on the mode; all tables share it.
    console.print(by_column("retention", [t.table for t in tables], [table_fields(t) for t in tables]))
    key_grid = Table(title="dispatch idempotency keys (fcm_dispatch_keys)")
    key_grid.add_column("", style="bold")
    key_grid.add_column("")
    for label, value in key_fields(keys):
        key_grid.add_row(label, value)
    console.print(key_grid)
    if audits:
        console.print(by_column("audit tables", [a.table for a in audits], [audit_fields(a) for a in audits]))
