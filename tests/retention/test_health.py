"""Retention health: `retention check`, the maintenance round's assessment, /metrics, and the
self-healing of TimescaleDB jobs whose background runs fail."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from datetime import timedelta

import asyncpg
import pytest

from service.db.time_series import HEARTBEATS
from service.metrics import Metrics
from service.retention.health import assess, read_jobs
from service.retention.maintenance import PartitionMaintenance
from service.retention.policies import read_policy
from service.settings import Settings, StorageMode
from tests.retention.conftest import pause_background_jobs
from tests.retention.history import insert_at, server_now


def _check(db_url: str, mode: StorageMode) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": db_url, "TELEMETRY_STORAGE_MODE": mode}
    return subprocess.run(
        [sys.executable, "-m", "service", "retention", "check"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


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


async def test_check_passes_when_every_window_holds_and_reports_each_failed_job_otherwise(
    db_url: str, conn: asyncpg.Connection, mode: StorageMode
) -> None:
    result = await asyncio.to_thread(_check, db_url, mode)
    failed = []
    if mode == "timescale":
        # Where the scheduler works the jobs succeed; where it fails (TimescaleDB 2.28.3 on
        # PostgreSQL 15.20) each job that already ran must be named: never a silent pass.
        failed = [j for j in await read_jobs(conn) if j.last_status == "Failed"]
    if not failed:
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.startswith("ok: every retention window holds")
    else:
        assert result.returncode == 1
        lines = result.stdout.splitlines()
        assert len(lines) == len(failed)
        for job in failed:
            assert any(f"job {job.job_id} ({job.name}): last background run failed" in line for line in lines)
    assert "Traceback" not in result.stderr


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
        "INSERT INTO device_events (device_id, event_type, created_at)"
        " VALUES ('d', 'enrolled', now() - interval '120 days')"
    )
    result = await asyncio.to_thread(_check, db_url, mode)
    assert result.returncode == 1
    assert "PROBLEM device_events: oldest row is" in result.stdout


async def test_a_round_exports_retention_metrics(pools: list[asyncpg.Pool], mode: StorageMode) -> None:
    metrics = Metrics()
    report = await PartitionMaintenance(pools[0], Settings(storage_mode=mode), mode, metrics).run_once()
    assert report.ran and report.health is not None
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in metrics.registry.collect()
        for s in family.samples
    }
    for table in ("device_heartbeats", "fcm_dispatches", "apk_download_events", "device_events"):
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
    instances = [PartitionMaintenance(pool, settings, mode, Metrics()) for pool in pools]
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
    report = await PartitionMaintenance(pools[0], Settings(storage_mode=mode), mode, Metrics()).run_once()
    assert f"{refresh.job_id} refresh:device_heartbeats_hourly" in report.healed
    assert await conn.fetchval("SELECT sum(heartbeats) FROM device_heartbeats_hourly") == 2
