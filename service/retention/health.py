"""Retention health: whether every window actually holds, and which job is failing.

Retention that fails silently is the common way such systems fill their disks: a TimescaleDB
job can fail on every background run (seen with TimescaleDB 2.28.3 on PostgreSQL 15.20:
`cannot drop portal "" while it is being set up`) while `CALL run_job` in a session works. So
retention is verified, not assumed:

* `assess` reports a problem when a table holds rows older than its window plus its
  documented overshoot (interval + schedule for time-series tables, one maintenance interval for
  audit tables), when a job's last background run failed, or when a job is overdue by more than
  its schedule. It reads only catalog views and one `min()` per table range, so it is cheap
  enough for every maintenance round.
* rollups (`service.db.rollups`): a problem when a rollup's watermark lags more than
  `settings.rollup_max_lag` behind now (the daily rollup one day more, since its buckets close
  once a day), or when it never materialized although raw rows are older than that. Refresh
  jobs (and the compression job) are project jobs like the retention ones: reported and healed.
* `jobs_to_heal` names the jobs the service's maintenance runs in the foreground
  (`CALL run_job`) because the scheduler did not run them successfully; those runs are not
  recorded in `job_stats`, so a job keeps reporting its failure (and `retention check` keeps
  failing) until the scheduler itself succeeds: the problem is still there, only its effect is
  contained.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

import asyncpg

from service.db.rollups import HOURLY, ROLLUPS
from service.db.time_series import DISPATCH_KEY_EXPIRY_PROCEDURE, HEARTBEATS, TIME_SERIES_TABLES
from service.retention import audit, rollups
from service.retention.policies import RETENTION_PROC
from service.retention.show import LAST_ERROR, table_status
from service.retention.windows import format_window
from service.settings import Settings, StorageMode

# The project's own jobs: the retention policies of our hypertables and the key expiry.
# (`timescaledb_information.job_errors` keeps the message of each failed run.)
_JOBS = f"""
SELECT j.job_id, j.proc_name, j.hypertable_name, j.schedule_interval, j.scheduled, j.next_start,
       s.last_run_started_at, s.last_successful_finish, s.last_run_status, s.total_failures,
       {LAST_ERROR}
FROM timescaledb_information.jobs j
LEFT JOIN timescaledb_information.job_stats s ON s.job_id = j.job_id
WHERE (j.proc_name = ANY($2::text[]) AND j.hypertable_schema = current_schema()
       AND j.hypertable_name = ANY($1::text[]))
   OR j.proc_name = '{DISPATCH_KEY_EXPIRY_PROCEDURE}'
ORDER BY j.job_id
"""

# The policies of our hypertables and continuous aggregates, by the name a job is reported as.
_POLICY_KINDS = {
    RETENTION_PROC: "retention",
    "policy_refresh_continuous_aggregate": "refresh",
    "policy_compression": "compression",
    "policy_columnstore": "compression",
}


@dataclass(frozen=True, slots=True)
class JobHealth:
    """One TimescaleDB job of the project, as its background runs left it."""

    job_id: int
    name: str  # "retention:<table>", "refresh:<rollup>", "compression:<table>", "dispatch_key_expiry"
    schedule: timedelta
    scheduled: bool
    next_start: datetime | None
    last_run: datetime | None
    last_success: datetime | None
    last_status: str | None
    total_failures: int
    last_error: str | None

    def failed(self) -> bool:
        return self.last_status == "Failed"

    def overdue(self, now: datetime) -> bool:
        """Scheduled, and its next run should have started more than one schedule ago."""
        return self.scheduled and self.next_start is not None and now - self.next_start > self.schedule


@dataclass(frozen=True, slots=True)
class RetentionHealth:
    mode: StorageMode
    checked_at: datetime
    jobs: tuple[JobHealth, ...] = ()
    # Age of the oldest row per table (None: empty table).
    oldest_age: dict[str, timedelta | None] = field(default_factory=dict)
    # How far each rollup's watermark is behind now (None: nothing materialized yet).
    rollup_lag: dict[str, timedelta | None] = field(default_factory=dict)
    problems: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems


async def read_jobs(conn: asyncpg.Connection) -> list[JobHealth]:
    names = [t.name for t in TIME_SERIES_TABLES] + [r.name for r in ROLLUPS]
    rows = await conn.fetch(_JOBS, names, list(_POLICY_KINDS))
    return [
        # TimescaleDB reports "never" as -infinity, which asyncpg decodes as a naive datetime.min.
        JobHealth(
            job_id=r["job_id"],
            name=(
                f"{_POLICY_KINDS[r['proc_name']]}:{r['hypertable_name']}"
                if r["proc_name"] in _POLICY_KINDS
                else "dispatch_key_expiry"
            ),
            schedule=r["schedule_interval"],
            scheduled=r["scheduled"],
            next_start=_finite(r["next_start"]),
            last_run=_finite(r["last_run_started_at"]),
            last_success=_finite(r["last_successful_finish"]),
            last_status=r["last_run_status"],
            total_failures=r["total_failures"] or 0,
            last_error=r["last_error"],
        )
        for r in rows
    ]


def _finite(value: datetime | None) -> datetime | None:
    return value if value is not None and value.tzinfo is not None else None


def jobs_to_heal(jobs: list[JobHealth] | tuple[JobHealth, ...], now: datetime) -> list[JobHealth]:
    """The jobs whose last background run failed, or that are overdue."""
    return [j for j in jobs if j.failed() or j.overdue(now)]


async def assess(conn: asyncpg.Connection, mode: StorageMode, settings: Settings) -> RetentionHealth:
    now: datetime = await conn.fetchval("SELECT now()")
    problems: list[str] = []
    oldest_age: dict[str, timedelta | None] = {}
    for table in TIME_SERIES_TABLES:
        status = await table_status(conn, mode, table, settings)
        age = None if status.oldest_row is None else now - status.oldest_row
        oldest_age[table.name] = age
        overshoot = status.max_overshoot
        if overshoot is None:
            problems.append(f"{table.name}: nothing runs retention (no scheduled job)")
            overshoot = status.interval  # what would be allowed if it ran right now
        if age is not None and age > status.window + overshoot:
            problems.append(
                f"{table.name}: oldest row is {format_window(_whole(age))} old, past its window "
                f"{format_window(status.window)} + overshoot {format_window(overshoot)}"
            )
    for table in audit.AUDIT_TABLES:
        window = await audit.read_window(conn, table)
        oldest = await audit.oldest_row(conn, table)
        age = None if oldest is None else now - oldest
        oldest_age[table.name] = age
        if age is not None and age > window + settings.maintenance_interval:
            problems.append(
                f"{table.name}: oldest row is {format_window(_whole(age))} old, past its window "
                f"{format_window(window)} + one maintenance interval"
            )
    rollup_lag = await _rollup_lags(conn, now, settings, oldest_age.get(HEARTBEATS.name), problems)
    jobs = await read_jobs(conn) if mode == "timescale" else []
    for job in jobs:
        if job.failed():
            error = f": {job.last_error}" if job.last_error else ""
            problems.append(f"job {job.job_id} ({job.name}): last background run failed{error}")
        elif job.overdue(now):
            problems.append(
                f"job {job.job_id} ({job.name}): overdue since {job.next_start:%Y-%m-%d %H:%M:%S %Z} "
                f"(schedule {format_window(job.schedule)})"
            )
    return RetentionHealth(
        mode=mode,
        checked_at=now,
        jobs=tuple(jobs),
        oldest_age=oldest_age,
        rollup_lag=rollup_lag,
        problems=tuple(problems),
    )


def allowed_lag(rollup_bucket: timedelta, settings: Settings) -> timedelta:
    """`rollup_max_lag` for the hourly rollup; a coarser rollup gets its extra bucket length."""
    return settings.rollup_max_lag + (rollup_bucket - HOURLY.bucket)


async def _rollup_lags(
    conn: asyncpg.Connection,
    now: datetime,
    settings: Settings,
    oldest_raw: timedelta | None,
    problems: list[str],
) -> dict[str, timedelta | None]:
    mechanism = await rollups.mechanism_or_none(conn)
    if mechanism is None:
        return {}
    lags: dict[str, timedelta | None] = {}
    for rollup in ROLLUPS:
        wm = await rollups.watermark(conn, mechanism, rollup)
        lag = None if wm is None else now - wm
        lags[rollup.name] = lag
        allowed = allowed_lag(rollup.bucket, settings)
        if lag is not None and lag > allowed:
            problems.append(
                f"{rollup.name}: watermark {wm:%Y-%m-%d %H:%M:%S %Z} lags {format_window(_whole(lag))}, "
                f"more than {format_window(allowed)} (TELEMETRY_ROLLUP_MAX_LAG_SECONDS)"
            )
        elif lag is None and oldest_raw is not None and oldest_raw > allowed:
            problems.append(
                f"{rollup.name}: nothing materialized although raw heartbeats are "
                f"{format_window(_whole(oldest_raw))} old (allowed lag {format_window(allowed)})"
            )
    return lags


def _whole(value: timedelta) -> timedelta:
    return timedelta(seconds=int(value.total_seconds()))
