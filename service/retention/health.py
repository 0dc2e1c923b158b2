"""Retention health: whether every window actually holds, and which job is failing.

Retention that fails silently is the common way such systems fill their disks: a TimescaleDB
job can fail on every background run (seen with TimescaleDB 2.28.3 on PostgreSQL 15.20:
`cannot drop portal "" while it is being set up`) while `CALL run_job` in a session works. So
retention is verified, not assumed:

* `assess` reports a problem when a table holds rows older than its window plus its
  documented overshoot (interval + schedule for time-series tables, one maintenance interval for
  audit tables), when a job's last background run failed, or when a job is overdue by more than
  its schedule, or never ran although due (`START_GRACE` after its due time, at once when no
  scheduler runs for the database). It reads only catalog views,
  `pg_stat_activity` and one `min()` per table range, so it is cheap enough for every
  maintenance round.
* rollups (`service.db.rollups`): a problem when a rollup's watermark lags more than
  `settings.rollup_max_lag` behind now (the daily rollup one day more, since its buckets close
  once a day), or when it never materialized although raw rows are older than that. Refresh
  jobs (and the compression job) are project jobs like the retention ones: reported and healed.
* the scheduler (`SchedulerHealth`): a problem when no TimescaleDB scheduler runs for this
  database (no worker slot for it: PostgreSQL then logs "no available background worker
  slots", and no job ever runs, fails or gets a next start), or when the server's worker
  settings let jobs fail to start (`service.db.background_workers`); a warning when parallel
  queries could take the slots jobs need, or when the role cannot see other roles' backends
  (then nothing is concluded from a missing scheduler). Each names the settings and
  PostgreSQL's hint.
* `jobs_to_heal` names the jobs the service's maintenance runs in the foreground
  (`CALL run_job`) because the scheduler did not run them successfully, did not start them when
  due, or because a table still holds a chunk a retention run should have dropped, whatever
  `job_stats` says. Those runs are not recorded in `job_stats`, so a job keeps reporting its
  failure (and `retention check` keeps failing) until the scheduler itself succeeds: the problem
  is still there, only its effect is contained.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import EllipsisType

import asyncpg

from service.db.background_workers import HINT, WorkerSettings, read_worker_settings
from service.db.rollups import HOURLY, ROLLUPS, RollupMechanism
from service.db.time_series import DISPATCH_KEY_EXPIRY_PROCEDURE, HEARTBEATS, TIME_SERIES_TABLES
from service.db.windows import format_window
from service.retention import audit, rollups
from service.retention.policies import RETENTION_PROC, read_window
from service.retention.show import LAST_ERROR, table_status
from service.settings import Settings, StorageMode

# The project's own jobs: the retention policies of our hypertables and the key expiry.
# (`timescaledb_information.job_errors` keeps the message of each failed run.) For a retention
# job also its window and where its table's oldest chunk ends: chunk metadata only, no row is
# read (a continuous aggregate's chunks are those of its materialization hypertable). The
# chunks view is not free (about 20 ms at 1,500 chunks), so it is read once, not once per job.
_JOBS = f"""
WITH oldest AS (
    SELECT hypertable_schema, hypertable_name, min(range_end) AS chunk_end
    FROM timescaledb_information.chunks GROUP BY hypertable_schema, hypertable_name
)
SELECT j.job_id, j.proc_name, j.hypertable_name, j.schedule_interval, j.scheduled, j.next_start,
       s.last_run_started_at, s.last_successful_finish, s.last_run_status, s.total_failures,
       {LAST_ERROR},
       CASE WHEN j.proc_name = '{RETENTION_PROC}' THEN (j.config->>'drop_after')::interval END AS drop_after,
       CASE WHEN j.proc_name = '{RETENTION_PROC}' THEN o.chunk_end END AS oldest_chunk_end
FROM timescaledb_information.jobs j
LEFT JOIN timescaledb_information.job_stats s ON s.job_id = j.job_id
LEFT JOIN timescaledb_information.continuous_aggregates ca
       ON ca.view_schema = j.hypertable_schema AND ca.view_name = j.hypertable_name
LEFT JOIN oldest o
       ON o.hypertable_schema = coalesce(ca.materialization_hypertable_schema, j.hypertable_schema)
      AND o.hypertable_name = coalesce(ca.materialization_hypertable_name, j.hypertable_name)
WHERE (j.proc_name = ANY($2::text[]) AND j.hypertable_schema = current_schema()
       AND j.hypertable_name = ANY($1::text[]))
   OR j.proc_name = '{DISPATCH_KEY_EXPIRY_PROCEDURE}'
ORDER BY j.job_id
"""

SCHEDULER = "TimescaleDB Background Worker Scheduler"

# Schedulers are background workers connected to their database, so they are listed in
# pg_stat_activity; but PostgreSQL shows another role's backend_type only to superusers and
# members of pg_read_all_stats, so for other roles the answer is "cannot tell".
_SCHEDULERS = f"""
SELECT current_database() AS database, current_user AS role,
       pg_has_role('pg_read_all_stats', 'USAGE') AS sees_all,
       count(*) FILTER (WHERE datname = current_database()) AS here,
       count(*) FILTER (WHERE datname IS DISTINCT FROM current_database()) AS elsewhere
FROM pg_stat_activity WHERE backend_type = '{SCHEDULER}'
"""

# A due job starts within seconds when its scheduler has a worker for it. One that never ran
# this long after it was due, or that no scheduler runs, will not start by itself; waiting a
# whole schedule (a day, for retention) before calling it overdue would let a window slip by it.
START_GRACE = timedelta(minutes=1)

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
    # Retention jobs only: the window, and where the table's oldest chunk ends (None: no chunk).
    drop_after: timedelta | None = None
    oldest_chunk_end: datetime | None = None

    def failed(self) -> bool:
        return self.last_status == "Failed"

    def overdue(self, now: datetime, scheduler_running: bool) -> bool:
        """Scheduled, and not started although it should have been:

        * no scheduler runs for its database: its next start passed more than `START_GRACE` ago,
          or it has none (TimescaleDB records a next start only once a scheduler has seen the
          job, so a job no scheduler ever saw has none);
        * it never ran: its next start passed more than `START_GRACE` ago;
        * otherwise: its next run should have started more than one schedule ago.
        """
        if not self.scheduled:
            return False
        if self.next_start is None:
            return not scheduler_running
        late = now - self.next_start
        if not scheduler_running or self.last_run is None:
            return late > START_GRACE
        return late > self.schedule

    def holds_expired_chunks(self, now: datetime) -> bool:
        """A scheduled retention job whose table still holds a chunk that ended more than its
        window plus one schedule ago: any run in that time would have dropped it (a chunk goes
        once its end is past the window), so none ran, whatever `job_stats` says."""
        return (
            self.scheduled
            and self.drop_after is not None
            and self.oldest_chunk_end is not None
            and self.oldest_chunk_end < now - self.drop_after - self.schedule
        )


@dataclass(frozen=True, slots=True)
class SchedulerHealth:
    """TimescaleDB's job scheduler for this database, and the server's worker settings."""

    database: str
    # A scheduler for this database is in pg_stat_activity; None: this role cannot see it.
    running: bool | None
    other_schedulers: int  # schedulers of other databases, each holding a background worker
    workers: WorkerSettings | None  # None: TimescaleDB is not loaded
    role: str = ""

    @property
    def dead(self) -> bool:
        """Known not to run: jobs then start only when the service runs them."""
        return self.running is False

    def problems(self) -> list[str]:
        """Why jobs do not or cannot start, each with what to do; [] when they can."""
        problems = []
        if self.dead:
            problems.append(
                f"TimescaleDB's job scheduler is not running for database {self.database} (no "
                f"{SCHEDULER!r} in pg_stat_activity): no job runs in the background (the service's"
                f" maintenance runs them in the foreground); {self._why_not_running()}; HINT: {HINT}"
            )
        if self.workers is not None:
            problems += self.workers.problems()
        return problems

    def warnings(self) -> list[str]:
        """Not problems yet: settings under which a job can fail to start, or a role that cannot
        see whether the scheduler runs; each with what to do."""
        warnings = [] if self.workers is None else self.workers.warnings()
        if self.running is None:
            warnings.append(
                f"cannot tell whether TimescaleDB's job scheduler runs for database {self.database}: "
                f"role {self.role} does not see other roles' backends in pg_stat_activity; HINT: "
                f"GRANT pg_read_all_stats TO {self.role}"
            )
        return warnings

    def _why_not_running(self) -> str:
        w = self.workers
        if w is None:
            return "TimescaleDB is not in shared_preload_libraries"
        if w.max_background_workers == 0:
            return "timescaledb.max_background_workers = 0 turns TimescaleDB's background workers off"
        if w.max_worker_processes <= w.launchers:
            return (
                f"max_worker_processes = {w.max_worker_processes} leaves no slot beside the "
                f'{w.launchers} launchers (the server log says "no available background worker slots")'
            )
        if self.other_schedulers and self.other_schedulers >= w.max_background_workers - 1:
            # Each database with TimescaleDB keeps one worker for its scheduler for good, and
            # their jobs take the rest while they run.
            return (
                f"the schedulers of {self.other_schedulers} other databases hold "
                f"{self.other_schedulers} of timescaledb.max_background_workers = "
                f"{w.max_background_workers} (the server log says "
                f'"TimescaleDB background worker limit of {w.max_background_workers} exceeded")'
            )
        return (
            f"max_worker_processes = {w.max_worker_processes}, timescaledb.max_background_workers = "
            f'{w.max_background_workers}: the server log says why ("no available background worker '
            f'slots" or "TimescaleDB background worker limit ... exceeded")'
        )


async def read_scheduler(conn: asyncpg.Connection) -> SchedulerHealth:
    """A snapshot of pg_stat_activity and the server's settings (timescale mode): cheap, no lock."""
    row = await conn.fetchrow(_SCHEDULERS)
    return SchedulerHealth(
        database=row["database"],
        running=row["here"] > 0 if row["sees_all"] else None,
        other_schedulers=row["elsewhere"],
        workers=await read_worker_settings(conn),
        role=row["role"],
    )


@dataclass(frozen=True, slots=True)
class RetentionHealth:
    mode: StorageMode
    checked_at: datetime
    jobs: tuple[JobHealth, ...] = ()
    # Age of the oldest row per table (None: empty table).
    oldest_age: dict[str, timedelta | None] = field(default_factory=dict)
    # How far each rollup's watermark is behind now (None: nothing materialized yet).
    rollup_lag: dict[str, timedelta | None] = field(default_factory=dict)
    scheduler: SchedulerHealth | None = None  # timescale mode only
    # The age past which each table's oldest row is reported: window + overshoot.
    max_age: dict[str, timedelta] = field(default_factory=dict)
    # The lag past which each rollup is reported (`allowed_lag`).
    max_lag: dict[str, timedelta] = field(default_factory=dict)
    problems: tuple[str, ...] = ()
    # Not (yet) a problem: settings under which a job can fail to start (`retention check`
    # prints them, the maintenance logs them); they do not make /health degraded.
    warnings: tuple[str, ...] = ()

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
            drop_after=r["drop_after"],
            oldest_chunk_end=r["oldest_chunk_end"],
        )
        for r in rows
    ]


def _finite(value: datetime | None) -> datetime | None:
    return value if value is not None and value.tzinfo is not None else None


def job_problem(job: JobHealth, now: datetime, scheduler_running: bool) -> str | None:
    """What `retention check` reports about `job`: a failed last background run, or a run that
    did not start when due; None when neither."""
    if job.failed():
        error = f": {job.last_error}" if job.last_error else ""
        return f"job {job.job_id} ({job.name}): last background run failed{error}"
    if not job.overdue(now, scheduler_running):
        return None
    due = "" if job.next_start is None else f" since {job.next_start:%Y-%m-%d %H:%M:%S %Z}"
    why = "" if scheduler_running else " (no scheduler runs for this database)"
    if job.last_run is None:
        return f"job {job.job_id} ({job.name}): never ran in the background although due{due}{why}"
    return f"job {job.job_id} ({job.name}): overdue{due} (schedule {format_window(job.schedule)}){why}"


def heal_reason(job: JobHealth, now: datetime, scheduler_running: bool) -> str | None:
    """Why the service must run `job` in the foreground now, or None: the one rule for it."""
    if job.failed():
        return "failed its last background run"
    if job.overdue(now, scheduler_running):
        return "never ran in the background although due" if job.last_run is None else "is overdue"
    if job.holds_expired_chunks(now):
        return "left a chunk past its window + schedule"
    return None


def jobs_to_heal(
    jobs: list[JobHealth] | tuple[JobHealth, ...], now: datetime, scheduler_running: bool
) -> list[JobHealth]:
    """The jobs whose last background run failed, that are overdue (promptly when they never
    ran or no scheduler runs them), or whose table holds a chunk past its window + schedule."""
    return [j for j in jobs if heal_reason(j, now, scheduler_running) is not None]


async def assess(
    conn: asyncpg.Connection,
    mode: StorageMode,
    settings: Settings,
    *,
    mechanism: RollupMechanism | EllipsisType | None = rollups.UNREAD,
) -> RetentionHealth:
    """Every retained table's window checked against its oldest row, every rollup's lag, and in
    timescale mode the scheduler and the project's jobs. `mechanism`: the rollups' mechanism
    when the caller read it already."""
    if mechanism is rollups.UNREAD:
        mechanism = await rollups.mechanism_or_none(conn)
    now: datetime = await conn.fetchval("SELECT now()")
    problems: list[str] = []
    oldest_age: dict[str, timedelta | None] = {}
    max_age: dict[str, timedelta] = {}
    for table in TIME_SERIES_TABLES:
        status = await table_status(conn, mode, table, settings)
        age = None if status.oldest_row is None else now - status.oldest_row
        oldest_age[table.name] = age
        overshoot = status.max_overshoot
        if overshoot is None:
            problems.append(f"{table.name}: nothing runs retention (no scheduled job)")
            overshoot = status.interval  # what would be allowed if it ran right now
        max_age[table.name] = status.window + overshoot
        if age is not None and age > status.window + overshoot:
            problems.append(
                f"{table.name}: oldest row is {format_window(_whole(age))} old, past its window "
                f"{format_window(status.window)} + overshoot {format_window(overshoot)}"
            )
    for table in audit.AUDIT_TABLES:
        window = await read_window(conn, table)
        oldest = await audit.oldest_row(conn, table)
        age = None if oldest is None else now - oldest
        oldest_age[table.name] = age
        max_age[table.name] = window + settings.maintenance_interval
        if age is not None and age > window + settings.maintenance_interval:
            problems.append(
                f"{table.name}: oldest row is {format_window(_whole(age))} old, past its window "
                f"{format_window(window)} + one maintenance interval"
            )
    rollup_lag = await _rollup_lags(conn, mechanism, now, settings, oldest_age.get(HEARTBEATS.name), problems)
    scheduler = await read_scheduler(conn) if mode == "timescale" else None
    max_lag = {r.name: allowed_lag(r.bucket, settings) for r in ROLLUPS if r.name in rollup_lag}
    jobs = await read_jobs(conn) if mode == "timescale" else []
    if scheduler is not None:
        problems += scheduler.problems()
    # A role that cannot tell is judged as if the scheduler ran: the slower rules, no false alarm.
    running = scheduler is None or not scheduler.dead
    problems += [p for p in (job_problem(j, now, running) for j in jobs) if p is not None]
    return RetentionHealth(
        mode=mode,
        checked_at=now,
        jobs=tuple(jobs),
        oldest_age=oldest_age,
        rollup_lag=rollup_lag,
        scheduler=scheduler,
        max_age=max_age,
        max_lag=max_lag,
        problems=tuple(problems),
        warnings=tuple(scheduler.warnings()) if scheduler is not None else (),
    )


def allowed_lag(rollup_bucket: timedelta, settings: Settings) -> timedelta:
    """`rollup_max_lag` for the hourly rollup; a coarser rollup gets its extra bucket length."""
    return settings.rollup_max_lag + (rollup_bucket - HOURLY.bucket)


async def _rollup_lags(
    conn: asyncpg.Connection,
    mechanism: RollupMechanism | None,
    now: datetime,
    settings: Settings,
    oldest_raw: timedelta | None,
    problems: list[str],
) -> dict[str, timedelta | None]:
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
