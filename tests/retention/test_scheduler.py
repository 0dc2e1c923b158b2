"""Retention holds when TimescaleDB's scheduler is dead: a cluster with too few worker slots.

`max_worker_processes = 2` is taken by TimescaleDB's launcher and PostgreSQL's logical
replication launcher, so the launcher logs "no available background worker slots" and the
database never gets a scheduler: no job ever runs in the background, none is "failed", and
`job_stats` has no next start for most of them. The service must notice and run them itself.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path

import asyncpg
import pytest

from service.db.embedded import EmbeddedPostgres, free_port
from service.db.time_series import HEARTBEATS
from service.metrics import Metrics
from service.retention.health import read_scheduler
from service.retention.maintenance import Maintenance
from service.retention.policies import read_policy
from service.settings import Settings
from tests.retention.history import insert_at, server_now
from tests.support.cli import child_env, run_telemetry
from tests.support.cluster import ENGINE, TestServer, migrate


@pytest.fixture(scope="module")
def starved(pg_server: TestServer) -> Iterator[EmbeddedPostgres]:
    """A migrated timescale database on a cluster whose scheduler gets no worker slot."""
    if ENGINE == "postgres":
        pytest.skip("timescale only: postgres mode has no job scheduler")
    if not pg_server.timescale:
        if ENGINE == "timescale":
            pytest.fail(f"TEST_ENGINE=timescale but {pg_server.why_no_timescale}")
        pytest.skip(f"timescale mode skipped: {pg_server.why_no_timescale}")
    tmp = Path(tempfile.mkdtemp(prefix="telemetry-starved-pg-"))
    cluster = EmbeddedPostgres(
        tmp,
        port=free_port(),
        server_options={"fsync": "off", "max_connections": "50", "max_worker_processes": "2"},
    )
    try:
        cluster.start()
        if not cluster.timescale_available:
            pytest.skip("the local PostgreSQL binaries cannot load TimescaleDB")
        asyncio.run(migrate(cluster.url, "timescale"))
        yield cluster
    finally:
        cluster.stop("immediate")
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
async def starved_conn(starved: EmbeddedPostgres) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(starved.url)
    try:
        yield conn
    finally:
        await conn.close()


async def test_without_a_scheduler_one_round_drops_the_expired_chunks_and_names_the_cause(
    starved: EmbeddedPostgres, starved_conn: asyncpg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    conn = starved_conn
    assert not await conn.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'TimescaleDB Background Worker Scheduler'"
    ), "the cluster was meant to have no scheduler"
    policy = await read_policy(conn, "timescale", HEARTBEATS)
    now = await server_now(conn)
    old = now - policy.window - 3 * policy.interval - timedelta(days=1)
    await insert_at(conn, "timescale", HEARTBEATS, [old, now - timedelta(minutes=5)])
    # Nothing the scheduler records says anything is wrong: no failure, no next start.
    stats = await conn.fetchrow(
        "SELECT last_run_status, next_start FROM timescaledb_information.job_stats WHERE job_id = $1",
        policy.job_id,
    )
    assert stats is None or stats["last_run_status"] is None

    metrics = Metrics()
    pool = await asyncpg.create_pool(starved.url, min_size=1, max_size=2)
    try:
        maintenance = Maintenance(pool, Settings(storage_mode="timescale"), "timescale", metrics)
        report = await maintenance.run_once()
    finally:
        await pool.close()

    assert f"{policy.job_id} retention:device_heartbeats" in report.healed, report
    assert await conn.fetchval("SELECT count(*) FROM device_heartbeats WHERE bucket_start <= $1", old) == 0
    assert not await conn.fetchval(
        "SELECT count(*) FROM timescaledb_information.chunks"
        " WHERE hypertable_name = 'device_heartbeats' AND range_end <= $1",
        now - policy.window,
    )
    assert await conn.fetchval("SELECT count(*) FROM device_heartbeats") == 1  # the recent row stays
    assert report.health is not None and maintenance.last_health is report.health
    dead = [p for p in report.health.problems if "scheduler is not running" in p]
    assert len(dead) == 1, report.health.problems
    assert "max_worker_processes = 2" in dead[0]
    assert "raise max_worker_processes in tandem with timescaledb.max_background_workers" in dead[0]
    database = await conn.fetchval("SELECT current_database()")
    assert metrics.retention_scheduler_running.labels(database)._value.get() == 0
    assert metrics.retention_problems._value.get() == len(report.health.problems)
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("scheduler is not running" in m for m in logged), logged


def test_retention_check_names_a_server_configured_so_that_jobs_cannot_start(
    starved: EmbeddedPostgres,
) -> None:
    env = child_env()
    env |= {"DATABASE_URL": starved.url}
    result = run_telemetry(["retention", "check"], env, timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    config = [line for line in lines if line.startswith("PROBLEM max_worker_processes = 2 ")]
    assert len(config) == 1, lines
    assert "timescaledb.max_background_workers = 16" in config[0]
    assert "HINT: raise max_worker_processes" in config[0]
    assert any(line.startswith("PROBLEM TimescaleDB's job scheduler is not running") for line in lines), lines
    # Every project job is named: none of them ever ran in the background.
    assert any("(retention:device_heartbeats): never ran in the background" in line for line in lines), lines
    assert "Traceback" not in result.stderr


async def test_a_role_that_cannot_see_other_backends_gets_a_warning_not_a_dead_scheduler(
    starved: EmbeddedPostgres, starved_conn: asyncpg.Connection
) -> None:
    """PostgreSQL hides another role's backend_type: no scheduler in sight proves nothing then."""
    await starved_conn.execute("DROP ROLE IF EXISTS watcher")
    await starved_conn.execute("CREATE ROLE watcher LOGIN PASSWORD 'watcher'")
    conn = await asyncpg.connect(f"postgresql://watcher:watcher@127.0.0.1:{starved.port}/telemetry")
    try:
        scheduler = await read_scheduler(conn)
    finally:
        await conn.close()
    assert scheduler.running is None and not scheduler.dead
    assert not [p for p in scheduler.problems() if "scheduler is not running" in p]
    assert any(w.endswith("HINT: GRANT pg_read_all_stats TO watcher") for w in scheduler.warnings())
    # What the settings make impossible is still said, whoever asks.
    assert any(p.startswith("max_worker_processes = 2 ") for p in scheduler.problems())
