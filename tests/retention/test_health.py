"""Retention health: `retention check`, the maintenance round's assessment, /metrics, and the
self-healing of TimescaleDB jobs whose background runs fail."""

from __future__ import annotations

import asyncio
import os
import subprocess
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from service.db.time_series import HEARTBEATS
from service.metrics import Metrics
from service.retention.health import START_GRACE, JobHealth, assess, jobs_to_heal, read_jobs, read_scheduler
from service.retention.maintenance import Maintenance
from service.retention.policies import read_policy
from service.settings import Settings, StorageMode
from tests.retention.history import insert_at, server_now
from tests.support.cli import run_telemetry
from tests.support.jobs import pause_background_jobs


def _check(db_url: str, mode: StorageMode) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": db_url, "TELEMETRY_STORAGE_MODE": mode}
    return run_telemetry(["retention", "check"], env, timeout=120)


async def _record_failed_background_run(conn: asyncpg.Connection, job_id: int) -> None:
    """Write the scheduler's own record of a failed background run of the job.

    Where the scheduler fails every run (TimescaleDB 2.28.3 on PostgreSQL 15.20) this is what it
    leaves anyway; writing it here makes the test independent of when (and whether, with the
    test cluster's few background workers spread over many databases) a worker picks the job up.
    """
    await conn.execute(
        """
        INSERT INTO _timescaledb_internal.bgw_job_stat (job_id, last_start, last_finish, next_start,
            last_successful_finish, last_run_success, total_runs, total_duration,
            total_duration_failures, total_successes, total_failures, total_crashes,
            consecutive_failures, consecutive_crashes)
        VALUES ($1, now(), now(), now() + interval '1 day', '-infinity', false, 1, '0', '0', 0, 1, 0, 1, 0)
        ON CONFLICT (job_id) DO UPDATE SET last_run_success = false, last_start = now(),
            last_finish = now(), total_failures = bgw_job_stat.total_failures + 1,
            consecutive_failures = bgw_job_stat.consecutive_failures + 1
        """,
        job_id,
    )


async def _record_successful_background_run(conn: asyncpg.Connection, job_id: int) -> None:
    """Write the scheduler's record of a background run that succeeded just now, next one in a day."""
    await conn.execute(
        """
        INSERT INTO _timescaledb_internal.bgw_job_stat (job_id, last_start, last_finish, next_start,
            last_successful_finish, last_run_success, total_runs, total_duration,
            total_duration_failures, total_successes, total_failures, total_crashes,
            consecutive_failures, consecutive_crashes)
        VALUES ($1, now(), now(), now() + interval '1 day', now(), true, 1, '0', '0', 1, 0, 0, 0, 0)
        ON CONFLICT (job_id) DO UPDATE SET last_run_success = true, last_start = now(),
            last_finish = now(), last_successful_finish = now(), next_start = now() + interval '1 day',
            consecutive_failures = 0
        """,
        job_id,
    )


def _job(**state: object) -> JobHealth:
    """A scheduled daily retention job, due an hour ago, that ran the day before."""
    now = NOW
    fields: dict[str, object] = {
        "job_id": 1000,
        "name": "retention:device_heartbeats",
        "schedule": timedelta(days=1),
        "scheduled": True,
        "next_start": now - timedelta(hours=1),
        "last_run": now - timedelta(days=1, hours=1),
        "last_success": now - timedelta(days=1, hours=1),
        "last_status": "Success",
        "total_failures": 0,
        "last_error": None,
        "drop_after": timedelta(days=2),
        "oldest_chunk_end": now - timedelta(days=1),
    }
    return JobHealth(**(fields | state))  # type: ignore[arg-type]


NOW = datetime(2026, 1, 10, 12, tzinfo=UTC)


def test_a_job_that_ran_before_is_overdue_one_schedule_late_while_a_scheduler_runs() -> None:
    assert not _job().overdue(NOW, scheduler_running=True)
    assert _job(next_start=NOW - timedelta(days=1, minutes=1)).overdue(NOW, scheduler_running=True)


def test_a_job_that_never_ran_is_overdue_a_minute_after_it_was_due() -> None:
    never = {"last_run": None, "last_success": None, "last_status": None}
    assert not _job(**never, next_start=NOW - START_GRACE).overdue(NOW, scheduler_running=True)
    assert _job(**never, next_start=NOW - START_GRACE - timedelta(seconds=1)).overdue(
        NOW, scheduler_running=True
    )
    # No next start yet: the scheduler has not seen the job; it will when it runs.
    assert not _job(**never, next_start=None).overdue(NOW, scheduler_running=True)


def test_without_a_scheduler_a_job_is_overdue_at_once_or_a_minute_after_its_next_start() -> None:
    assert _job(last_run=None, last_status=None, next_start=None).overdue(NOW, scheduler_running=False)
    assert _job(next_start=NOW - timedelta(minutes=2)).overdue(NOW, scheduler_running=False)
    assert not _job(next_start=NOW + timedelta(hours=1)).overdue(NOW, scheduler_running=False)
    # A paused job is the operator's choice, never overdue.
    assert not _job(scheduled=False, next_start=None).overdue(NOW, scheduler_running=False)


def test_a_chunk_past_the_window_plus_one_schedule_is_expired_whatever_the_stats_say() -> None:
    edge = NOW - timedelta(days=2) - timedelta(days=1)  # window + schedule
    assert not _job(oldest_chunk_end=edge).holds_expired_chunks(NOW)
    late = _job(oldest_chunk_end=edge - timedelta(seconds=1), next_start=NOW + timedelta(hours=23))
    assert late.holds_expired_chunks(NOW) and not late.failed() and not late.overdue(NOW, True)
    assert jobs_to_heal([late], NOW, scheduler_running=True) == [late]
    assert not _job(oldest_chunk_end=None).holds_expired_chunks(NOW)
    assert not _job(scheduled=False, oldest_chunk_end=edge - timedelta(days=9)).holds_expired_chunks(NOW)
    assert not _job(drop_after=None, oldest_chunk_end=edge - timedelta(days=9)).holds_expired_chunks(NOW)


async def test_check_passes_when_every_window_holds_and_reports_each_failed_job_otherwise(
    db_url: str, conn: asyncpg.Connection, mode: StorageMode
) -> None:
    result = await asyncio.to_thread(_check, db_url, mode)
    failed: list[JobHealth] = []
    scheduler_running = True
    if mode == "timescale":
        # Where the scheduler works the jobs succeed; where it fails (TimescaleDB 2.28.3 on
        # PostgreSQL 15.20) each job that already ran must be named: never a silent pass.
        failed = [j for j in await read_jobs(conn) if j.last_status == "Failed"]
        # The test cluster's 4 background workers go to the first databases' schedulers, so
        # most test databases have none: then the check says so and names the jobs it leaves.
        scheduler_running = not (await read_scheduler(conn)).dead
    lines = result.stdout.splitlines()
    assert "Traceback" not in result.stderr
    if not failed and scheduler_running:
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.startswith("ok: every retention window holds")
        return
    assert result.returncode == 1
    for job in failed:
        assert any(f"job {job.job_id} ({job.name}): last background run failed" in line for line in lines)
    if scheduler_running:
        assert len(lines) == len(failed), lines
    else:
        assert lines[0].startswith("PROBLEM TimescaleDB's job scheduler is not running for database"), lines
        assert (
            "HINT: raise max_worker_processes in tandem with timescaledb.max_background_workers" in lines[0]
        )
        assert all(line.startswith("PROBLEM job ") for line in lines[1:]), lines
        # A retention job no scheduler ever saw has no next start: it is named at once.
        assert any("(retention:device_heartbeats): never ran in the background" in line for line in lines)


async def test_check_fails_naming_the_table_that_holds_rows_past_its_window(
    db_url: str, conn: asyncpg.Connection, mode: StorageMode
) -> None:
    if mode == "timescale":
        await pause_background_jobs(conn)
    policy = await read_policy(conn, mode, HEARTBEATS)
    now = await server_now(conn)
    await insert_at(conn, mode, HEARTBEATS, [now - policy.window - 3 * policy.interval - timedelta(days=1)])
    health = await assess(conn, mode, Settings(storage_mode=mode))
    assert any(p.startswith("device_heartbeats: oldest row is") for p in health.problems), health.problems
    result = await asyncio.to_thread(_check, db_url, mode)
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert any(line.startswith("PROBLEM device_heartbeats: oldest row") for line in lines)


async def test_check_fails_on_audit_rows_past_their_window(
    db_url: str, conn: asyncpg.Connection, mode: StorageMode
) -> None:
    await conn.execute(
        "INSERT INTO enrollment_events (outcome, remote_addr, created_at)"
        " VALUES ('enrolled', 'a', now() - interval '120 days')"
    )
    result = await asyncio.to_thread(_check, db_url, mode)
    assert result.returncode == 1
    assert "PROBLEM enrollment_events: oldest row is" in result.stdout


async def test_a_round_exports_retention_metrics(pools: list[asyncpg.Pool], mode: StorageMode) -> None:
    metrics = Metrics()
    report = await Maintenance(pools[0], Settings(storage_mode=mode), mode, metrics).run_once()
    assert report.ran and report.health is not None
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in metrics.registry.collect()
        for s in family.samples
    }
    for table in (
        "device_heartbeats",
        "fcm_dispatches",
        "apk_download_events",
        "events",
        "enrollment_events",
    ):
        assert ("telemetry_retention_oldest_row_age_seconds", (("table", table),)) in samples
    assert samples[("telemetry_retention_problems", ())] == len(report.health.problems)
    if mode == "timescale":
        job = (("job", "retention:device_heartbeats"),)
        assert ("telemetry_retention_job_failures_total", job) in samples


async def test_a_failed_retention_job_is_run_by_one_instance_per_pass_and_old_chunks_go(
    pools: list[asyncpg.Pool], conn: asyncpg.Connection, mode: StorageMode
) -> None:
    if mode != "timescale":
        pytest.skip("timescale only: postgres mode has no job scheduler to fail")
    await pause_background_jobs(conn)
    policy = await read_policy(conn, mode, HEARTBEATS)
    assert policy.job_id is not None
    now = await server_now(conn)
    old = now - policy.window - 3 * policy.interval
    await insert_at(conn, mode, HEARTBEATS, [old])
    await _record_failed_background_run(conn, policy.job_id)
    settings = Settings(storage_mode=mode)
    instances = [Maintenance(pool, settings, mode, Metrics()) for pool in pools]
    for _ in range(2):
        reports = await asyncio.gather(*(i.run_once() for i in instances))
        healed = [name for r in reports if r.ran for name in r.healed]
        assert healed.count(f"{policy.job_id} retention:device_heartbeats") == 1, reports
        assert sum(r.ran for r in reports) == 1
        ran = next(r for r in reports if r.ran)
        assert ran.health is not None
        assert any(
            f"job {policy.job_id} (retention:device_heartbeats): last background run failed" in p
            for p in ran.health.problems
        )
    assert await conn.fetchval("SELECT count(*) FROM device_heartbeats WHERE bucket_start <= $1", old) == 0


async def test_a_failed_refresh_job_is_run_by_the_service_and_the_rollup_catches_up(
    pools: list[asyncpg.Pool], conn: asyncpg.Connection, mode: StorageMode
) -> None:
    if mode != "timescale":
        pytest.skip("timescale only: rollup tables are refreshed by the service itself")
    await pause_background_jobs(conn)
    now = await server_now(conn)
    await insert_at(conn, mode, HEARTBEATS, [now - timedelta(hours=5), now - timedelta(hours=3)])
    jobs = {j.name: j for j in await read_jobs(conn)}
    refresh = jobs["refresh:device_heartbeats_hourly"]
    assert {
        "refresh:fleet_daily",
        "retention:device_heartbeats_hourly",
        "compression:device_heartbeats",
    } <= set(jobs)
    await _record_failed_background_run(conn, refresh.job_id)
    report = await Maintenance(pools[0], Settings(storage_mode=mode), mode, Metrics()).run_once()
    assert f"{refresh.job_id} refresh:device_heartbeats_hourly" in report.healed
    assert await conn.fetchval("SELECT sum(heartbeats) FROM device_heartbeats_hourly") == 2


async def test_a_retention_job_the_scheduler_says_succeeded_runs_when_its_table_holds_an_expired_chunk(
    pools: list[asyncpg.Pool], conn: asyncpg.Connection, mode: StorageMode
) -> None:
    if mode != "timescale":
        pytest.skip("timescale only: postgres mode drops its partitions itself")
    policy = await read_policy(conn, mode, HEARTBEATS)
    assert policy.job_id is not None
    now = await server_now(conn)
    # Its chunk ends more than window + schedule (1 day) ago: any run since would have dropped it.
    old = now - policy.window - policy.interval - timedelta(days=1, hours=1)
    await insert_at(conn, mode, HEARTBEATS, [old])
    await _record_successful_background_run(conn, policy.job_id)
    [job] = [j for j in await read_jobs(conn) if j.job_id == policy.job_id]
    assert job.last_status == "Success" and not job.overdue(now, scheduler_running=False)
    report = await Maintenance(pools[0], Settings(storage_mode=mode), mode, Metrics()).run_once()
    assert f"{policy.job_id} retention:device_heartbeats" in report.healed, report
    assert await conn.fetchval("SELECT count(*) FROM device_heartbeats") == 0
