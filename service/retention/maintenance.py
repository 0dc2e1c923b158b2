"""The service's maintenance round: a list of small steps, run by one loop.

Each step (`MaintenanceStep`) says which storage modes it applies to, bounds its own work, and
fills in its part of the round's `MaintenanceReport` plus its own entry in `report.steps`. The
round runs `ROUND` in order (`Maintenance.steps`), each step whose `applies` holds:

* `PartitionsAhead` (postgres): for each time-series table, partitions cover
  `[now - window, now + horizon]`, with `horizon = max(partition_lookahead, max_clock_skew + 2 *
  maintenance_interval)`: a write carries a time no later than `now + max_clock_skew`, and the
  next round is at most one interval away (two, if one round is skipped or fails), so a write
  never waits for a partition. The oldest partition covers `now - window`, the oldest time a
  write may carry. (This relies on the heartbeat bucket dividing the partition interval, as the
  defaults do, so a bucket's start lies in the same partition as its heartbeat.) Creation comes
  first: if dropping fails (for example on its lock timeout) the round still leaves the
  partitions writes need.
* `RollupTables` (the table mechanism: postgres mode, and an Apache build): the rollup tables'
  partitions by their own windows, each rollup refreshed from its watermark
  (`service.retention.rollups`). Before the raw drop: the guard keeps a raw partition until it is
  rolled up.
* `ExpiredPartitions` (postgres): drops the partitions past the window (the rule:
  `service.retention.cleanup`), without counting their rows, to keep rounds cheap; a heartbeat
  partition only once the hourly rollup's watermark has passed its end (the guard).
* `DispatchKeyExpiry` (postgres; TimescaleDB's job does it otherwise): at most
  `KEY_BATCHES_PER_ROUND` batches.
* `AuditExpiry` (both): rows of the plain retained tables past their windows, at most
  `AUDIT_BATCHES_PER_ROUND` batches per table (`service.retention.audit`).
* `CommandExpiry` (both): marks `expired` the commands with no terminal ack after
  `TELEMETRY_COMMAND_TTL_SECONDS` (`service.commands.expiry`), at most
  `COMMAND_BATCHES_PER_ROUND` batches, "now" from `clock` when one is injected.
* `InstallVerification` (both): each device's latest reported app version, and the installs it
  confirms (`service.rollout.verification`); the first round reads the whole raw heartbeat
  window, later ones only what arrived since.
* `RolloutFunnel` (both): the rollout funnel's snapshot (after verification, so it counts the
  versions just recorded) and its download counts past the window (`service.rollout.counts`).
* `JobHealing` (timescale): runs in the foreground (`CALL run_job`) every project job whose last
  background run failed, that is overdue (at once when no scheduler runs for the database, or a
  minute after it was due when it never ran), or whose table holds a chunk past its window +
  schedule (`service.retention.health.jobs_to_heal`), so windows hold whatever TimescaleDB's
  scheduler does, even when it never started; a warning with the job's last error is logged
  once per change of its state, and one for a scheduler that is not running.
* `RecentDays` (both): `fleet_daily_recent`, the days `fleet_daily` has not closed yet, when the
  hourly watermark moved (`service.retention.recent_days`), after the refreshes and healed jobs.
* `PresencePass` (both): `went_offline` for every presence deadline that passed, at most
  `presence.MAX_BATCHES` batches, and the `telemetry_devices{presence}` gauges
  (`service.fleet.presence`).
* `HealthAssessment` (both): retention health (`service.retention.health`): `last_health`, the
  metrics, `/health`'s "degraded" and the `retention.problem_*` events come from it.

The round reads the storage mode once (on the first round) and the rollup mechanism once per
round; every step gets both from the `Round`.

A step that stops at its bound with work left (and no error) is re-queued: `run_forever` runs
another round of only the re-queued steps `REQUEUE_PAUSE` later, and again while work is left,
until the next full round is due (which runs them as usual). So a backlog is worked off at once
in bounded pieces, each its own short round that other instances' and the writer's transactions
interleave with, and never in one unbounded step; presence and health keep their full-round
cadence. A step that failed is not re-queued: the next full round retries it.

A failed step is reported in `errors` (and its entry's `errors`), and the other steps still run.

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
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import ClassVar

import asyncpg

from service.commands.expiry import expire_commands
from service.db import locks
from service.db.errors import STATEMENT_FAILED
from service.db.rollups import RECENT_DAYS, ROLLUPS, RollupMechanism
from service.db.time_series import TIME_SERIES_TABLES
from service.events import retention as retention_events
from service.fleet import presence
from service.fleet.presence import PresencePass as PresenceResult
from service.metrics import Metrics
from service.retention import rollups
from service.retention.audit import AUDIT_TABLES, DELETE_BATCH, expire
from service.retention.cleanup import DROP_LOCK_TIMEOUT, DroppedRange, clean_table, expire_dispatch_keys
from service.retention.health import (
    RetentionHealth,
    assess,
    heal_reason,
    jobs_to_heal,
    read_jobs,
    read_scheduler,
)
from service.retention.policies import ENSURE_PARTITIONS, detect_storage_mode, read_policy
from service.retention.recent_days import RecentDays as RecentDaysResult
from service.retention.recent_days import refresh_recent_days
from service.rollout import counts as rollout_counts
from service.rollout.verification import run as verification_step
from service.settings import Settings, StorageMode

log = logging.getLogger(__name__)

KEY_BATCHES_PER_ROUND = 100
AUDIT_BATCHES_PER_ROUND = 100
COMMAND_BATCHES_PER_ROUND = 100
# Between the rounds that run only re-queued steps: long enough for the writer's and other
# instances' transactions to get between two of them.
REQUEUE_PAUSE = timedelta(seconds=1)

BOTH: frozenset[StorageMode] = frozenset({"postgres", "timescale"})
POSTGRES: frozenset[StorageMode] = frozenset({"postgres"})
TIMESCALE: frozenset[StorageMode] = frozenset({"timescale"})


@dataclass(frozen=True, slots=True)
class StepReport:
    """One step's entry in a round's report."""

    name: str
    seconds: float
    # False: the step stopped at its bound with work left, and was re-queued.
    complete: bool = True
    errors: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class MaintenanceReport:
    """What one round did. `ran` is False when another instance held the maintenance lock;
    `skipped_because` says so."""

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
    presence: PresenceResult | None = None  # went_offline recorded, devices per presence
    rollups: rollups.RefreshReport | None = None  # rollup tables refreshed (table mechanism)
    recent_days: RecentDaysResult | None = None  # fleet_daily_recent (both mechanisms)
    health: RetentionHealth | None = None
    errors: tuple[str, ...] = ()
    seconds: float = 0.0
    steps: tuple[StepReport, ...] = ()  # one entry per step that ran, in order
    requeued: tuple[str, ...] = ()  # the steps that stopped at their bound with work left


@dataclass(slots=True)
class Round:
    """What the steps of one round share: the connection holding the maintenance lock, the
    storage mode and the rollup mechanism (read once per round; None before the rollups'
    migration), and the report the steps fill in."""

    conn: asyncpg.Connection
    mode: StorageMode
    mechanism: RollupMechanism | None
    report: MaintenanceReport


@dataclass(frozen=True, slots=True)
class StepOutcome:
    errors: tuple[str, ...] = ()
    # False: stopped at its bound with work left (re-queued unless it also failed).
    complete: bool = True


class MaintenanceStep(ABC):
    """One unit of a maintenance round. `run` never raises for a failed statement (it returns
    the error); only a lost connection ends the round."""

    name: ClassVar[str]
    modes: ClassVar[frozenset[StorageMode]]

    def applies(self, round_: Round) -> bool:
        return round_.mode in self.modes

    @abstractmethod
    async def run(self, round_: Round) -> StepOutcome: ...


def partition_horizon(settings: Settings) -> timedelta:
    """How far ahead of now partitions exist after a round (see the module docstring)."""
    return max(settings.partition_lookahead, settings.max_clock_skew + 2 * settings.maintenance_interval)


@dataclass(slots=True)
class PartitionsAhead(MaintenanceStep):
    """Bound: one `telemetry_ensure_partitions` per time-series table, each giving up after
    `DROP_LOCK_TIMEOUT` on the parent's lock."""

    name: ClassVar[str] = "partitions_ahead"
    modes: ClassVar[frozenset[StorageMode]] = POSTGRES
    horizon: timedelta

    async def run(self, round_: Round) -> StepOutcome:
        conn, created, errors = round_.conn, dict[str, int](), list[str]()
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
        round_.report = replace(round_.report, created=created)
        return StepOutcome(tuple(errors))


@dataclass(slots=True)
class RollupTables(MaintenanceStep):
    """Bound: per rollup one partition statement each way and one refresh of the buckets that
    closed since its watermark (plus its look-back)."""

    name: ClassVar[str] = "rollup_tables"
    modes: ClassVar[frozenset[StorageMode]] = BOTH
    horizon: timedelta

    def applies(self, round_: Round) -> bool:
        return round_.mechanism == "rollup_table"

    async def run(self, round_: Round) -> StepOutcome:
        conn, errors = round_.conn, list[str]()
        for rollup in ROLLUPS:
            try:
                policy = await read_policy(conn, "postgres", rollup.table)
                await conn.fetchval(
                    ENSURE_PARTITIONS, rollup.name, policy.interval, policy.window, self.horizon
                )
            except asyncpg.PostgresError as exc:
                errors.append(f"{rollup.name}: creating partitions failed: {exc}")
        report = await rollups.refresh_tables(conn)
        errors += report.errors
        for rollup in ROLLUPS:
            result = await clean_table(
                conn, "postgres", rollup.table, count_rows=False, mechanism=round_.mechanism
            )
            if result.error is not None:
                errors.append(f"{rollup.name}: dropping expired partitions failed: {result.error}")
        round_.report = replace(round_.report, rollups=report)
        return StepOutcome(tuple(errors))


@dataclass(slots=True)
class ExpiredPartitions(MaintenanceStep):
    """Bound: one drop per time-series table (rows not counted), giving up after
    `DROP_LOCK_TIMEOUT` on the parent's lock."""

    name: ClassVar[str] = "expired_partitions"
    modes: ClassVar[frozenset[StorageMode]] = POSTGRES

    async def run(self, round_: Round) -> StepOutcome:
        dropped: dict[str, tuple[DroppedRange, ...]] = {}
        errors = []
        for table in TIME_SERIES_TABLES:
            result = await clean_table(
                round_.conn, "postgres", table, count_rows=False, mechanism=round_.mechanism
            )
            if result.error is not None:
                errors.append(f"{table.name}: dropping expired partitions failed: {result.error}")
            elif result.dropped:
                dropped[table.name] = result.dropped
        round_.report = replace(round_.report, dropped=dropped)
        return StepOutcome(tuple(errors))


@dataclass(slots=True)
class DispatchKeyExpiry(MaintenanceStep):
    """Bound: `max_batches` batches of `DISPATCH_KEY_EXPIRY_BATCH` keys."""

    name: ClassVar[str] = "dispatch_key_expiry"
    modes: ClassVar[frozenset[StorageMode]] = POSTGRES
    max_batches: int = KEY_BATCHES_PER_ROUND

    async def run(self, round_: Round) -> StepOutcome:
        keys = await expire_dispatch_keys(round_.conn, max_batches=self.max_batches)
        round_.report = replace(round_.report, keys_expired=keys.expired)
        if keys.error is not None:
            return StepOutcome((f"fcm_dispatch_keys: expiring keys failed: {keys.error}",), complete=False)
        return StepOutcome(complete=keys.complete)


@dataclass(slots=True)
class AuditExpiry(MaintenanceStep):
    """Bound: `max_batches` batches of `batch_size` rows per plain table."""

    name: ClassVar[str] = "audit_expiry"
    modes: ClassVar[frozenset[StorageMode]] = BOTH
    max_batches: int = AUDIT_BATCHES_PER_ROUND
    batch_size: int = DELETE_BATCH

    async def run(self, round_: Round) -> StepOutcome:
        expired: dict[str, int] = {}
        errors = []
        complete = True
        for table in AUDIT_TABLES:
            result = await expire(
                round_.conn, table, batch_size=self.batch_size, max_batches=self.max_batches
            )
            expired[table.name] = result.deleted
            complete = complete and result.complete
            if result.error is not None:
                errors.append(f"{table.name}: expiring audit rows failed: {result.error}")
        round_.report = replace(round_.report, audit_expired=expired)
        return StepOutcome(tuple(errors), complete)


@dataclass(slots=True)
class CommandExpiry(MaintenanceStep):
    """Bound: `max_batches` batches (`service.commands.expiry`)."""

    name: ClassVar[str] = "command_expiry"
    modes: ClassVar[frozenset[StorageMode]] = BOTH
    ttl: timedelta
    clock: Callable[[], datetime] | None = None
    max_batches: int = COMMAND_BATCHES_PER_ROUND

    async def run(self, round_: Round) -> StepOutcome:
        now = self.clock() if self.clock is not None else None
        expiry = await expire_commands(round_.conn, self.ttl, now=now, max_batches=self.max_batches)
        round_.report = replace(round_.report, commands_expired=expiry.expired)
        if expiry.error is not None:
            return StepOutcome((f"commands: expiring commands failed: {expiry.error}",), complete=False)
        return StepOutcome(complete=expiry.complete)


@dataclass(slots=True)
class InstallVerification(MaintenanceStep):
    """Bound: the heartbeats received within `lookback` (the whole raw window only until the
    first pass succeeded)."""

    name: ClassVar[str] = "install_verification"
    modes: ClassVar[frozenset[StorageMode]] = BOTH
    lookback: timedelta
    first_lookback: timedelta
    versions_read: bool = False

    async def run(self, round_: Round) -> StepOutcome:
        lookback = self.lookback if self.versions_read else self.first_lookback
        verification = await verification_step(round_.conn, lookback)
        round_.report = replace(round_.report, installs_verified=verification.installs_verified)
        if verification.error is not None:
            return StepOutcome((f"apk_installations: verifying installs failed: {verification.error}",))
        self.versions_read = True
        return StepOutcome()


@dataclass(slots=True)
class RolloutFunnel(MaintenanceStep):
    """Bound: one snapshot statement and one prune (`service.rollout.counts`)."""

    name: ClassVar[str] = "rollout_funnel"
    modes: ClassVar[frozenset[StorageMode]] = BOTH
    downloads_window: timedelta

    async def run(self, round_: Round) -> StepOutcome:
        funnel = await rollout_counts.run(round_.conn, self.downloads_window)
        if funnel.error is not None:
            return StepOutcome(
                (f"apk_rollout_snapshots: refreshing the rollout funnel failed: {funnel.error}",)
            )
        return StepOutcome()


@dataclass(slots=True)
class JobHealing(MaintenanceStep):
    """Bound: one foreground run per project job that needs one."""

    name: ClassVar[str] = "job_healing"
    modes: ClassVar[frozenset[StorageMode]] = TIMESCALE
    metrics: Metrics | None = None
    # The last state each job (and the scheduler) was seen in, so a failing job or a dead
    # scheduler is logged once, not every round.
    job_states: dict[int, tuple[str | None, str | None, str | None]] = field(default_factory=dict)
    scheduler_problems: tuple[str, ...] = ()

    async def run(self, round_: Round) -> StepOutcome:
        conn = round_.conn
        now = await conn.fetchval("SELECT now()")
        healed: list[str] = []
        errors: list[str] = []
        scheduler = await read_scheduler(conn)
        problems = tuple(scheduler.problems())
        if problems != self.scheduler_problems:
            for problem in problems:
                log.warning("retention: %s", problem)
            self.scheduler_problems = problems
        running = not scheduler.dead  # when this role cannot tell, as if it ran
        jobs = await read_jobs(conn)
        for job in jobs:
            reason = heal_reason(job, now, running)
            state = (job.last_status, job.last_error, reason)
            if self.job_states.get(job.job_id) != state and reason is not None:
                log.warning(
                    "TimescaleDB job %d (%s) %s (last error: %s); the service runs it itself until the"
                    " scheduler succeeds",
                    job.job_id,
                    job.name,
                    reason,
                    job.last_error or "-",
                )
            self.job_states[job.job_id] = state
        for job in jobs_to_heal(jobs, now, running):
            try:
                await conn.execute(f"CALL run_job({int(job.job_id)})")
            except STATEMENT_FAILED as exc:
                errors.append(f"job {job.job_id} ({job.name}): foreground run failed: {exc}")
                continue
            healed.append(f"{job.job_id} {job.name}")
            if self.metrics is not None:
                self.metrics.retention_foreground_runs.labels(job.name).inc()
        round_.report = replace(round_.report, healed=tuple(healed))
        return StepOutcome(tuple(errors))


@dataclass(slots=True)
class RecentDays(MaintenanceStep):
    """Bound: the days the daily rollup has not closed (one or two)."""

    name: ClassVar[str] = "recent_days"
    modes: ClassVar[frozenset[StorageMode]] = BOTH

    def applies(self, round_: Round) -> bool:
        return round_.mechanism is not None  # before the migrations that create them: nothing

    async def run(self, round_: Round) -> StepOutcome:
        conn, mechanism = round_.conn, round_.mechanism
        if mechanism is None or await conn.fetchval("SELECT to_regclass($1) IS NULL", RECENT_DAYS):
            return StepOutcome()
        try:
            recent = await refresh_recent_days(conn, mechanism)
        except asyncpg.PostgresError as exc:
            return StepOutcome((f"fleet_daily_recent: refresh failed: {exc}",))
        round_.report = replace(round_.report, recent_days=recent)
        return StepOutcome()


@dataclass(slots=True)
class PresencePass(MaintenanceStep):
    """Bound: `presence.MAX_BATCHES` batches of went_offline transitions."""

    name: ClassVar[str] = "presence"
    modes: ClassVar[frozenset[StorageMode]] = BOTH
    metrics: Metrics | None = None
    clock: Callable[[], datetime] | None = None

    async def run(self, round_: Round) -> StepOutcome:
        try:
            result = await presence.run_pass(round_.conn, None if self.clock is None else self.clock())
        except STATEMENT_FAILED as exc:
            return StepOutcome((f"device_presence: recording went_offline failed: {exc}",))
        if self.metrics is not None:
            for name, count in result.counts.items():
                self.metrics.devices.labels(name).set(count)
        round_.report = replace(round_.report, presence=result)
        return StepOutcome(complete=result.finished)


@dataclass(slots=True)
class HealthAssessment(MaintenanceStep):
    """Bound: catalog views and one `min()` per retained table range (`service.retention.health`).
    A failed assessment is logged, not reported as a round error (as before: `health` None)."""

    name: ClassVar[str] = "health"
    modes: ClassVar[frozenset[StorageMode]] = BOTH
    settings: Settings
    metrics: Metrics | None = None
    warnings: tuple[str, ...] = ()

    async def run(self, round_: Round) -> StepOutcome:
        conn = round_.conn
        try:
            health = await assess(conn, round_.mode, self.settings, mechanism=round_.mechanism)
        except STATEMENT_FAILED as exc:
            log.warning("retention health check failed: %s", exc)
            return StepOutcome()
        if health.warnings != self.warnings:
            for warning in health.warnings:
                log.warning("retention: %s", warning)
            self.warnings = health.warnings
        if self.metrics is not None:
            _export(health, self.metrics)
        try:
            await retention_events.record_change(conn, health.problems)
        except STATEMENT_FAILED as exc:
            log.warning("retention problem event not recorded: %s", exc)
        round_.report = replace(round_.report, health=health)
        return StepOutcome()


def round_steps(
    settings: Settings, metrics: Metrics | None = None, clock: Callable[[], datetime] | None = None
) -> tuple[MaintenanceStep, ...]:
    """The steps of a round, in the order they run (the module docstring says why)."""
    horizon = partition_horizon(settings)
    return (
        PartitionsAhead(horizon),
        RollupTables(horizon),
        ExpiredPartitions(),
        DispatchKeyExpiry(),
        AuditExpiry(),
        CommandExpiry(settings.command_ttl, clock),
        InstallVerification(
            lookback=2 * settings.maintenance_interval + settings.max_clock_skew,
            first_lookback=settings.retention.device_heartbeats,
        ),
        RolloutFunnel(settings.retention.apk_download_events),
        JobHealing(metrics),
        RecentDays(),
        PresencePass(metrics, clock),
        HealthAssessment(settings, metrics),
    )


class Maintenance:
    """Runs maintenance rounds: `steps` in order, one instance at a time.

    `run_once` runs one round (or, with `only`, the named steps) and returns its report. It
    raises only when it cannot run a round at all: the database is unreachable (asyncpg/OS
    errors), or, on the first round, the storage mode cannot be settled
    (`SchemaNotReadyError`, `StorageModeError`). A failed step inside a round is reported in
    `errors`, and the other steps still run.

    `run_forever` runs a round at once, then one every `settings.maintenance_interval` until
    `stop` is set (with the re-queued steps' rounds in between, see the module docstring), and
    never raises for a failed round: it logs it and tries again next time. `start()` runs it as
    a task until `stop()`, which returns once the task has ended (the writer's shape: the app
    starts and stops both the same way).

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
        self._settings = settings
        self._mode = mode
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.steps = round_steps(settings, metrics, clock)
        self.last_health: RetentionHealth | None = None

    @property
    def horizon(self) -> timedelta:
        """How far ahead of now partitions exist after a round (see the module docstring)."""
        return partition_horizon(self._settings)

    async def run_once(self, only: Collection[str] | None = None) -> MaintenanceReport:
        """One round of every step, or of the steps named in `only` (the re-queued ones)."""
        started = time.perf_counter()
        async with self._pool.acquire() as conn:
            if self._mode is None:
                self._mode = await detect_storage_mode(conn, self._settings.storage_mode)
            if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", locks.MAINTENANCE):
                return MaintenanceReport(
                    mode=self._mode, ran=False, skipped_because="another instance holds the maintenance lock"
                )
            try:
                report = await self._round(conn, self._mode, only)
            finally:
                # A broken connection cannot unlock, but the server releases its locks with it;
                # so does closing one that could not unlock (the pool does not reset sessions).
                try:
                    await conn.execute("SELECT pg_advisory_unlock($1)", locks.MAINTENANCE)
                except (*STATEMENT_FAILED, OSError):
                    conn.terminate()
        if report.health is not None:
            self.last_health = report.health
        return replace(report, seconds=time.perf_counter() - started)

    async def _round(
        self, conn: asyncpg.Connection, mode: StorageMode, only: Collection[str] | None
    ) -> MaintenanceReport:
        round_ = Round(
            conn, mode, await rollups.mechanism_or_none(conn), MaintenanceReport(mode=mode, ran=True)
        )
        entries: list[StepReport] = []
        for step in self.steps:
            if (only is not None and step.name not in only) or not step.applies(round_):
                continue
            step_started = time.perf_counter()
            outcome = await step.run(round_)
            entries.append(
                StepReport(step.name, time.perf_counter() - step_started, outcome.complete, outcome.errors)
            )
        return replace(
            round_.report,
            errors=tuple(e for entry in entries for e in entry.errors),
            steps=tuple(entries),
            requeued=tuple(e.name for e in entries if not e.complete and not e.errors),
        )

    async def start(self) -> None:
        if self._task is not None:
            raise RuntimeError("maintenance is already started")
        self._task = asyncio.create_task(self.run_forever(self._stop), name="maintenance")

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)

    async def run_forever(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            next_round = loop.time() + self._interval.total_seconds()
            report = await self._logged_round(None)
            # The re-queued steps, alone, until their work is done or the next round is due.
            pause = REQUEUE_PAUSE.total_seconds()
            while report is not None and report.requeued and loop.time() + pause < next_round:
                if await _stopped(stop, pause):
                    return
                report = await self._logged_round(report.requeued)
            await _stopped(stop, max(0.0, next_round - loop.time()))

    async def _logged_round(self, only: Collection[str] | None) -> MaintenanceReport | None:
        try:
            report = await self.run_once(only)
        except Exception:
            # Database down, schema not migrated yet, ...: the service keeps running and
            # the next round tries again.
            log.exception("partition maintenance round failed; retrying in %s", self._interval)
            return None
        _log_report(report)
        return report

    @property
    def _interval(self) -> timedelta:
        return self._settings.maintenance_interval


async def _stopped(stop: asyncio.Event, seconds: float) -> bool:
    """Wait `seconds` or until `stop` is set; whether it is."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    return stop.is_set()


def _export(health: RetentionHealth, metrics: Metrics) -> None:
    metrics.retention_problems.set(len(health.problems))
    if health.scheduler is not None and health.scheduler.running is not None:
        metrics.retention_scheduler_running.labels(health.scheduler.database).set(
            int(health.scheduler.running)
        )
    for table, age in health.oldest_age.items():
        metrics.retention_oldest_row_age.labels(table).set(0 if age is None else age.total_seconds())
    for table, limit in health.max_age.items():
        metrics.retention_max_row_age.labels(table).set(limit.total_seconds())
    for rollup, lag in health.rollup_lag.items():
        metrics.rollup_lag.labels(rollup).set(0 if lag is None else lag.total_seconds())
    for rollup, limit in health.max_lag.items():
        metrics.rollup_max_lag.labels(rollup).set(limit.total_seconds())
    for job in health.jobs:
        metrics.retention_job_last_success.labels(job.name).set(
            0 if job.last_success is None else job.last_success.timestamp()
        )
        metrics.retention_job_failures.labels(job.name).set(job.total_failures)
        metrics.retention_job_schedule.labels(job.name).set(job.schedule.total_seconds())
        # At 0 from the first round, so that the first foreground run shows up in increase().
        metrics.retention_foreground_runs.labels(job.name)


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
    if report.requeued:
        log.info(
            "maintenance: %s stopped at their bound with work left; re-queued", ", ".join(report.requeued)
        )
