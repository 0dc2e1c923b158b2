"""The service's retention maintenance: partitions ahead and expired ones dropped (postgres
mode), dispatch keys and audit rows expired.

TimescaleDB creates chunks on demand and runs retention and key expiry as database jobs, so in
timescale mode a round expires the audit tables (step 4), heals the jobs (step 5) and
recomputes the recent fleet days (step 6). In postgres mode a round, run by exactly one
instance at a time, does in this order:

1. for each time-series table, makes sure partitions cover `[now - window, now + horizon]`,
   with `horizon = max(partition_lookahead, max_clock_skew + 2 * maintenance_interval)`: a write
   carries a time no later than `now + max_clock_skew`, and the next round is at most one
   interval away (two, if one round is skipped or fails), so a write never waits for a
   partition. The oldest partition covers `now - window`, the oldest time a write may carry.
   (This relies on the heartbeat bucket dividing the partition interval, as the defaults do, so
   a bucket's start lies in the same partition as its heartbeat.)
2. rollup tables (`service.retention.rollups`): creates and drops their partitions by their own
   windows and refreshes them from their watermarks (also in timescale mode on an Apache build,
   which has no continuous aggregates);
2b. drops the partitions past the window (see `service.retention.cleanup` for the rule), without
   counting their rows, to keep rounds cheap; a heartbeat partition only once the hourly
   rollup's watermark has passed its end (the guard);
3. expires dispatch idempotency keys, at most `KEY_BATCHES_PER_ROUND` batches per round, so a
   backlog is worked off over several bounded rounds rather than in one unbounded one.
4. expires audit rows (`device_events`, `enrollment_events`) past their windows, at most
   `AUDIT_BATCHES_PER_ROUND` batches per table per round (see `service.retention.audit`).
4b. commands and installs, both modes: marks `expired` the commands with no terminal ack after
   `TELEMETRY_COMMAND_TTL_SECONDS` (`service.commands.expiry`, bounded batches, clock injectable
   through `clock`), records each device's latest reported app version and verifies the installs
   it confirms (`service.rollout.verification`), then refreshes the rollout funnel's snapshot
   and prunes its download counts past the window (`service.rollout.counts`).
5. timescale mode: runs in the foreground (`CALL run_job`) every project job whose last
   background run failed or that is overdue, so windows hold even where TimescaleDB's scheduler
   fails; a warning with the job's last error is logged once per change of its state.
6. recomputes `fleet_daily_recent`, the days `fleet_daily` has not closed yet, when the hourly
   watermark moved (`service.retention.recent_days`), after the refreshes and healed jobs;
6b. both modes: records `went_offline` for every presence deadline that passed and refreshes
   the `telemetry_devices{presence}` gauges (`service.fleet.presence`).
7. assesses retention health (`service.retention.health`): `last_health`, the metrics, and
   `/health`'s "degraded" come from it.

Creation comes first: if dropping fails (for example on its lock timeout) the round still leaves
the partitions writes need.

One instance at a time: a round starts by `pg_try_advisory_lock(locks.MAINTENANCE)` on its
connection; when another instance holds it, this instance skips the round (`ran` is False)
instead of queueing behind it. The partition functions additionally serialize per table with
transaction locks, so even a concurrent `telemetry retention run` never drops a partition twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

import asyncpg

from service.commands.expiry import expire_commands
from service.db import locks
from service.db.errors import STATEMENT_FAILED
from service.db.rollups import RECENT_DAYS, ROLLUPS
from service.db.time_series import TIME_SERIES_TABLES
from service.fleet import presence
from service.fleet.presence import PresencePass
from service.metrics import Metrics
from service.retention import rollups
from service.retention.audit import AUDIT_TABLES, expire
from service.retention.cleanup import DROP_LOCK_TIMEOUT, DroppedRange, clean_table, expire_dispatch_keys
from service.retention.health import RetentionHealth, assess, jobs_to_heal, read_jobs
from service.retention.policies import ENSURE_PARTITIONS, detect_storage_mode, read_policy
from service.retention.recent_days import RecentDays, refresh_recent_days
from service.rollout import counts as rollout_counts
from service.rollout.verification import run as verification_step
from service.settings import Settings, StorageMode

log = logging.getLogger(__name__)

# Any constant shared by every instance of this service (distinct from the migration lock).
KEY_BATCHES_PER_ROUND = 100
AUDIT_BATCHES_PER_ROUND = 100
COMMAND_BATCHES_PER_ROUND = 100


@dataclass(frozen=True, slots=True)
class MaintenanceReport:
    """What one round did. `ran` is False when it had nothing to do (timescale mode) or another
    instance held the maintenance lock; `skipped_because` says which."""

    mode: StorageMode
    ran: bool
    skipped_because: str | None = None
    created: dict[str, int] = field(default_factory=dict)  # partitions created, per table
    dropped: dict[str, tuple[DroppedRange, ...]] = field(default_factory=dict)
    keys_expired: int = 0
    audit_expired: dict[str, int] = field(default_factory=dict)  # rows deleted, per audit table
    commands_expired: int = 0
    installs_verified: int = 0
    healed: tuple[str, ...] = ()  # jobs run in the foreground ("<job_id> <name>")
    presence: PresencePass | None = None  # went_offline recorded, devices per presence
    rollups: rollups.RefreshReport | None = None  # rollup tables refreshed (table mechanism)
    recent_days: RecentDays | None = None  # fleet_daily_recent (both mechanisms)
    health: RetentionHealth | None = None
    errors: tuple[str, ...] = ()
    seconds: float = 0.0


class PartitionMaintenance:
    """Keeps a postgres-mode database's partitions ahead of writes and within their windows.

    `run_once` runs one round and returns its report. It raises only when it cannot run a round
    at all: the database is unreachable (asyncpg/OS errors), or, on the first round, the storage
    mode cannot be settled (`SchemaNotReadyError`, `StorageModeError`). A failed step inside a
    round is reported in `errors`, and the other steps still run.

    `run_forever` runs a round at once, then one every `settings.maintenance_interval` until
    `stop` is set, and never raises for a failed round: it logs it and tries again next time.
    `start()` runs it as a task until `stop()`, which returns once the task has ended (the
    writer's shape: the app starts and stops both the same way).

    Windows and partition intervals are read from `retention_policies` at every round, so
    `telemetry retention set` takes effect at the next round of every instance.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        settings: Settings,
        mode: StorageMode | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        """`clock`: "now" for command expiry and presence (default: the database's clock); for
        tests."""
        self._pool = pool
        self._clock = clock
        # The first round reads the whole raw heartbeat window for app versions, later ones
        # only what arrived since (see service.rollout.verification).
        self._versions_read = False
        self._settings = settings
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._mode = mode
        self._metrics = metrics
        # The last state each job was seen in, so a failing job is logged once, not every round.
        self._job_states: dict[int, tuple[str | None, str | None]] = {}
        self.last_health: RetentionHealth | None = None

    @property
    def horizon(self) -> timedelta:
        """How far ahead of now partitions exist after a round (see the module docstring)."""
        s = self._settings
        return max(s.partition_lookahead, s.max_clock_skew + 2 * s.maintenance_interval)

    async def run_once(self) -> MaintenanceReport:
        started = time.perf_counter()
        async with self._pool.acquire() as conn:
            if self._mode is None:
                self._mode = await detect_storage_mode(conn, self._settings.storage_mode)
            if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", locks.MAINTENANCE):
                return MaintenanceReport(
                    mode=self._mode, ran=False, skipped_because="another instance holds the maintenance lock"
                )
            try:
                if self._mode == "timescale":
                    # TimescaleDB's jobs handle the time-series tables and the dispatch keys.
                    audit_expired, errors = await self._expire_audit(conn)
                    lifecycle, lifecycle_errors = await self._commands_and_installs(conn)
                    errors += lifecycle_errors
                    healed, heal_errors = await self._heal_jobs(conn)
                    refreshed = None
                    if await rollups.mechanism_or_none(conn) == "rollup_table":
                        # An Apache build: no continuous aggregates, the rollup tables are ours.
                        refreshed, rollup_errors = await self._rollup_tables(conn)
                        errors += rollup_errors
                    report = MaintenanceReport(
                        mode="timescale",
                        ran=True,
                        audit_expired=audit_expired,
                        commands_expired=lifecycle[0],
                        installs_verified=lifecycle[1],
                        healed=healed,
                        rollups=refreshed,
                        errors=tuple(errors + heal_errors),
                    )
                else:
                    report = await self._round(conn)
                recent, recent_errors = await self._recent_days(conn)
                report = replace(report, recent_days=recent, errors=report.errors + tuple(recent_errors))
                presence, presence_errors = await self._presence(conn)
                health = await self._assess(conn, self._mode)
                return replace(
                    report,
                    presence=presence,
                    errors=report.errors + presence_errors,
                    health=health,
                    seconds=time.perf_counter() - started,
                )
            finally:
                # A broken connection cannot unlock, but the server releases its locks with it;
                # so does closing one that could not unlock (the pool does not reset sessions).
                try:
                    await conn.execute("SELECT pg_advisory_unlock($1)", locks.MAINTENANCE)
                except (*STATEMENT_FAILED, OSError):
                    conn.terminate()

    async def _round(self, conn: asyncpg.Connection) -> MaintenanceReport:
        created: dict[str, int] = {}
        dropped: dict[str, tuple[DroppedRange, ...]] = {}
        errors: list[str] = []
        for table in TIME_SERIES_TABLES:
            try:
                policy = await read_policy(conn, "postgres", table)
                async with conn.transaction():
                    # CREATE ... PARTITION OF also locks the parent exclusively: same reasoning
                    # as for DROP; the horizon leaves room for a round that gives up.
                    await conn.execute(f"SET LOCAL lock_timeout = '{DROP_LOCK_TIMEOUT}'")
                    created[table.name] = await conn.fetchval(
                        ENSURE_PARTITIONS, table.name, policy.interval, policy.window, self.horizon
                    )
            except asyncpg.PostgresError as exc:
                errors.append(f"{table.name}: creating partitions failed: {exc}")
        # Rollups before the raw drop: the guard holds raw partitions until they are rolled up.
        refreshed, rollup_errors = await self._rollup_tables(conn)
        errors += rollup_errors
        for table in TIME_SERIES_TABLES:
            result = await clean_table(conn, "postgres", table, count_rows=False)
            if result.error is not None:
                errors.append(f"{table.name}: dropping expired partitions failed: {result.error}")
            elif result.dropped:
                dropped[table.name] = result.dropped
        keys = await expire_dispatch_keys(conn, max_batches=KEY_BATCHES_PER_ROUND)
        if keys.error is not None:
            errors.append(f"fcm_dispatch_keys: expiring keys failed: {keys.error}")
        audit_expired, audit_errors = await self._expire_audit(conn)
        errors += audit_errors
        lifecycle, lifecycle_errors = await self._commands_and_installs(conn)
        errors += lifecycle_errors
        return MaintenanceReport(
            mode="postgres",
            ran=True,
            created=created,
            dropped=dropped,
            keys_expired=keys.expired,
            audit_expired=audit_expired,
            commands_expired=lifecycle[0],
            installs_verified=lifecycle[1],
            rollups=refreshed,
            errors=tuple(errors),
        )

    async def _rollup_tables(
        self, conn: asyncpg.Connection
    ) -> tuple[rollups.RefreshReport | None, list[str]]:
        """Table mechanism: partitions of the rollup tables ahead and within their windows,
        and every rollup refreshed from its watermark."""
        if await rollups.mechanism_or_none(conn) != "rollup_table":
            return None, []
        errors: list[str] = []
        for rollup in ROLLUPS:
            table = rollups.as_time_series(rollup)
            try:
                policy = await read_policy(conn, "postgres", table)
                await conn.fetchval(
                    ENSURE_PARTITIONS, table.name, policy.interval, policy.window, self.horizon
                )
            except asyncpg.PostgresError as exc:
                errors.append(f"{table.name}: creating partitions failed: {exc}")
        report = await rollups.refresh_tables(conn)
        errors += report.errors
        for rollup in ROLLUPS:
            result = await clean_table(conn, "postgres", rollups.as_time_series(rollup), count_rows=False)
            if result.error is not None:
                errors.append(f"{rollup.name}: dropping expired partitions failed: {result.error}")
        return report, errors

    async def _recent_days(self, conn: asyncpg.Connection) -> tuple[RecentDays | None, list[str]]:
        """Step 6: the fleet's days the daily rollup has not closed (after the refreshes)."""
        mechanism = await rollups.mechanism_or_none(conn)
        if mechanism is None or await conn.fetchval("SELECT to_regclass($1) IS NULL", RECENT_DAYS):
            return None, []  # before the migrations that create them
        try:
            return await refresh_recent_days(conn, mechanism), []
        except asyncpg.PostgresError as exc:
            return None, [f"fleet_daily_recent: refresh failed: {exc}"]

    async def _expire_audit(self, conn: asyncpg.Connection) -> tuple[dict[str, int], list[str]]:
        expired: dict[str, int] = {}
        errors: list[str] = []
        for table in AUDIT_TABLES:
            result = await expire(conn, table, max_batches=AUDIT_BATCHES_PER_ROUND)
            expired[table.name] = result.deleted
            if result.error is not None:
                errors.append(f"{table.name}: expiring audit rows failed: {result.error}")
        return expired, errors

    async def _commands_and_installs(self, conn: asyncpg.Connection) -> tuple[tuple[int, int], list[str]]:
        """Step 4b: (commands expired, installs verified), and the errors."""
        errors: list[str] = []
        s = self._settings
        expiry = await expire_commands(
            conn,
            s.command_ttl,
            now=self._clock() if self._clock is not None else None,
            max_batches=COMMAND_BATCHES_PER_ROUND,
        )
        if expiry.error is not None:
            errors.append(f"commands: expiring commands failed: {expiry.error}")
        lookback = (
            2 * s.maintenance_interval + s.max_clock_skew
            if self._versions_read
            else s.retention.device_heartbeats
        )
        verification = await verification_step(conn, lookback)
        if verification.error is not None:
            errors.append(f"apk_installations: verifying installs failed: {verification.error}")
        else:
            self._versions_read = True
        # After verification, so the snapshot counts the versions just recorded.
        funnel = await rollout_counts.run(conn, s.retention.apk_download_events)
        if funnel.error is not None:
            errors.append(f"apk_rollout_snapshots: refreshing the rollout funnel failed: {funnel.error}")
        return (expiry.expired, verification.installs_verified), errors
    async def _presence(self, conn: asyncpg.Connection) -> tuple[PresencePass | None, tuple[str, ...]]:
        try:
            result = await presence.run_pass(conn, None if self._clock is None else self._clock())
        except STATEMENT_FAILED as exc:
            return None, (f"device_presence: recording went_offline failed: {exc}",)
        if self._metrics is not None:
            for name, count in result.counts.items():
                self._metrics.devices.labels(name).set(count)
        return result, ()

    async def _heal_jobs(self, conn: asyncpg.Connection) -> tuple[tuple[str, ...], list[str]]:
        now = await conn.fetchval("SELECT now()")
        healed: list[str] = []
        errors: list[str] = []
        jobs = await read_jobs(conn)
        for job in jobs:
            state = (job.last_status, job.last_error)
            if self._job_states.get(job.job_id) != state and (job.failed() or job.overdue(now)):
                log.warning(
                    "TimescaleDB job %d (%s) %s (last error: %s); the service runs it itself until the"
                    " scheduler succeeds",
                    job.job_id,
                    job.name,
                    "failed its last background run" if job.failed() else "is overdue",
                    job.last_error or "-",
                )
            self._job_states[job.job_id] = state
        for job in jobs_to_heal(jobs, now):
            try:
                await conn.execute(f"CALL run_job({int(job.job_id)})")
            except STATEMENT_FAILED as exc:
                errors.append(f"job {job.job_id} ({job.name}): foreground run failed: {exc}")
                continue
            healed.append(f"{job.job_id} {job.name}")
            if self._metrics is not None:
                self._metrics.retention_foreground_runs.labels(job.name).inc()
        return tuple(healed), errors

    async def _assess(self, conn: asyncpg.Connection, mode: StorageMode) -> RetentionHealth | None:
        try:
            health = await assess(conn, mode, self._settings)
        except STATEMENT_FAILED as exc:
            log.warning("retention health check failed: %s", exc)
            return None
        self.last_health = health
        if self._metrics is not None:
            _export(health, self._metrics)
        return health

    async def start(self) -> None:
        if self._task is not None:
            raise RuntimeError("maintenance is already started")
        self._task = asyncio.create_task(self.run_forever(self._stop), name="partition-maintenance")

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)

    async def run_forever(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                report = await self.run_once()
            except Exception:
                # Database down, schema not migrated yet, ...: the service keeps running and
                # the next round tries again.
                log.exception("partition maintenance round failed; retrying in %s", self._interval)
            else:
                _log_report(report)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self._interval.total_seconds())

    @property
    def _interval(self) -> timedelta:
        return self._settings.maintenance_interval


def _export(health: RetentionHealth, metrics: Metrics) -> None:
    metrics.retention_problems.set(len(health.problems))
    for table, age in health.oldest_age.items():
        metrics.retention_oldest_row_age.labels(table).set(0 if age is None else age.total_seconds())
    for rollup, lag in health.rollup_lag.items():
        metrics.rollup_lag.labels(rollup).set(0 if lag is None else lag.total_seconds())
    for job in health.jobs:
        metrics.retention_job_last_success.labels(job.name).set(
            0 if job.last_success is None else job.last_success.timestamp()
        )
        metrics.retention_job_failures.labels(job.name).set(job.total_failures)


def _log_report(report: MaintenanceReport) -> None:
    if not report.ran:
        log.debug("partition maintenance skipped: %s", report.skipped_because)
        return
    for error in report.errors:
        log.warning("partition maintenance: %s", error)
    created = sum(report.created.values())
    dropped = sum(len(d) for d in report.dropped.values())
    audit_rows = sum(report.audit_expired.values())
    went_offline = 0 if report.presence is None else report.presence.went_offline
    level = (
        logging.INFO
        if created or dropped or report.keys_expired or audit_rows or went_offline
        else logging.DEBUG
    )
    log.log(
        level,
        "maintenance: %d partitions created, %d dropped, %d dispatch keys and %d audit rows expired,"
        " %d devices went offline in %.3fs",
        created,
        dropped,
        report.keys_expired,
        audit_rows,
        went_offline,
        report.seconds,
    )
    if report.commands_expired or report.installs_verified:
        log.info(
            "maintenance: %d commands expired, %d installs verified by heartbeats",
            report.commands_expired,
            report.installs_verified,
        )
