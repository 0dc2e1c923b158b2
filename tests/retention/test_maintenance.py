"""Postgres mode's in-service maintenance: one instance at a time, partitions always ahead."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import timedelta

import asyncpg
import pytest

from service.db import locks
from service.db.time_series import DISPATCHES, HEARTBEATS, TIME_SERIES_TABLES
from service.retention.maintenance import Maintenance
from service.retention.policies import read_policy
from service.settings import Settings, StorageMode
from tests.retention.history import insert_at, server_now, stored_times
from tests.support.cluster import TestServer, create_database, migrate, settings_for


async def partitions(conn: asyncpg.Connection, table: str) -> list[asyncpg.Record]:
    return await conn.fetch("SELECT * FROM telemetry_partition_bounds($1)", table)


async def test_timescale_mode_leaves_chunks_and_keys_to_the_database_and_expires_audit_rows(
    pools: list[asyncpg.Pool], conn: asyncpg.Connection, mode: StorageMode
) -> None:
    if mode != "timescale":
        pytest.skip("timescale only")
    ranges_before = await conn.fetchval("SELECT count(*) FROM timescaledb_information.chunks")
    report = await Maintenance(pools[0], Settings(storage_mode=mode)).run_once()
    assert (report.mode, report.ran) == ("timescale", True)
    assert report.created == {} and report.dropped == {} and report.keys_expired == 0
    audit_tables = {"enrollment_events", "commands", "command_pushes", "bulk_dispatches", "operator_audit"}
    assert set(report.audit_expired) == audit_tables
    assert report.errors == ()
    assert await conn.fetchval("SELECT count(*) FROM timescaledb_information.chunks") == ranges_before


async def test_two_instances_at_once_no_errors_nothing_dropped_twice_partitions_ahead(
    pools: list[asyncpg.Pool], conn: asyncpg.Connection, mode: StorageMode
) -> None:
    if mode != "postgres":
        pytest.skip("TimescaleDB creates and drops chunks itself")
    settings = Settings(storage_mode=mode)
    policy = await read_policy(conn, mode, HEARTBEATS)
    now = await server_now(conn)
    # Expired history: twelve partitions' worth of heartbeats from before the window.
    old = [now - policy.window - policy.interval * k for k in range(2, 14)]
    await insert_at(conn, mode, HEARTBEATS, old)
    instances = [Maintenance(pool, settings) for pool in pools]

    reports = []
    for _ in range(5):
        reports += await asyncio.gather(*(m.run_once() for m in instances))

    assert all(r.errors == () for r in reports)
    assert any(r.ran for r in reports)
    dropped = Counter(d.name for r in reports for ranges in r.dropped.values() for d in ranges)
    assert dropped and max(dropped.values()) == 1, "a partition was dropped twice"
    assert await stored_times(conn, HEARTBEATS) == []
    horizon = instances[0].horizon
    now = await server_now(conn)
    for table in TIME_SERIES_TABLES:
        bounds = await partitions(conn, table.name)
        assert max(b["range_end"] for b in bounds) >= now + horizon - timedelta(seconds=5), table.name
        current = [b for b in bounds if b["range_start"] <= now < b["range_end"]]
        assert len(current) == 1, table.name


async def test_an_instance_skips_its_round_while_another_holds_the_lock(
    pools: list[asyncpg.Pool], conn: asyncpg.Connection, mode: StorageMode
) -> None:
    if mode != "postgres":
        pytest.skip("postgres only")
    assert await conn.fetchval("SELECT pg_try_advisory_lock($1)", locks.MAINTENANCE)
    try:
        report = await Maintenance(pools[0], Settings(storage_mode=mode)).run_once()
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", locks.MAINTENANCE)
    assert not report.ran
    assert report.skipped_because and "another instance" in report.skipped_because
    after = await Maintenance(pools[0], Settings(storage_mode=mode)).run_once()
    assert after.ran and after.errors == ()


async def test_writes_at_the_skew_edges_succeed_right_after_a_maintenance_run(
    pg_server: TestServer, mode: StorageMode
) -> None:
    if mode != "postgres":
        pytest.skip("TimescaleDB creates chunks on demand")
    # No look-ahead beyond what the skew needs, and a skew longer than any partition, so the
    # future edge lies in partitions only the maintenance round can have created.
    url = await create_database(pg_server)
    settings = settings_for(
        url, mode, partition_lookahead=timedelta(0), max_clock_skew=timedelta(days=1, hours=1)
    )
    await migrate(url, mode, settings=settings)
    conn = await asyncpg.connect(url)
    pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
    try:
        future = "now() + $1::interval"
        with pytest.raises(asyncpg.CheckViolationError):  # "no partition of relation ... found"
            await _write_at(conn, "apk_download_events", future, settings.max_clock_skew)
        report = await Maintenance(pool, settings).run_once()
        assert report.ran and report.errors == ()

        for table in TIME_SERIES_TABLES:
            window = (await read_policy(conn, mode, table)).window
            for edge, arg in (("now() - $1::interval", window), (future, settings.max_clock_skew)):
                await _write_at(conn, table.name, edge, arg)
        assert await conn.fetchval("SELECT count(*) FROM device_heartbeats") == 2
        assert await conn.fetchval("SELECT count(*) FROM fcm_dispatches") == 2
        assert await conn.fetchval("SELECT count(*) FROM apk_download_events") == 2
    finally:
        await pool.close()
        await conn.close()


async def _write_at(conn: asyncpg.Connection, table: str, at: str, arg: timedelta) -> None:
    """One row at time `at` (SQL over $1), the way the writers store it."""
    if table == "device_heartbeats":
        # The bucket start the writer stores: the accepted time floored to the bucket.
        await conn.execute(
            "INSERT INTO device_heartbeats (device_id, bucket_start, ts, status, battery_pct)"
            f" SELECT 'edge-' || t, date_bin(interval '10 seconds', t, timestamptz 'epoch'), t, 'ok', 5"
            f" FROM (SELECT {at} AS t) s",
            arg,
        )
    elif table == "fcm_dispatches":
        await conn.execute(
            "WITH k AS (INSERT INTO fcm_dispatch_keys (request_id, dispatch_id, sent_at)"
            f" SELECT gen_random_uuid()::text, nextval('fcm_dispatches_id_seq'), {at} RETURNING *)"
            " INSERT INTO fcm_dispatches (id, sent_at, request_id, device_id, action)"
            " SELECT dispatch_id, sent_at, request_id, 'd', 'ping' FROM k",
            arg,
        )
    elif table == "apk_download_events":
        await conn.execute(
            "INSERT INTO apk_download_events (ts, build_id, device_id, outcome)"
            f" VALUES ({at}, 'b', 'd', 'ok')",
            arg,
        )
    else:
        await conn.execute(
            f"INSERT INTO events (device_id, type, occurred_at) VALUES ('d', 'device.enrolled', {at})", arg
        )


async def test_maintenance_follows_a_window_changed_in_the_database(
    pools: list[asyncpg.Pool], conn: asyncpg.Connection, mode: StorageMode
) -> None:
    if mode != "postgres":
        pytest.skip("postgres only")
    now = await server_now(conn)
    await insert_at(conn, mode, HEARTBEATS, [now - timedelta(hours=30), now - timedelta(hours=1)])
    await conn.execute(
        "UPDATE retention_policies SET drop_after = '1 day' WHERE table_name = 'device_heartbeats'"
    )
    report = await Maintenance(pools[0], Settings(storage_mode=mode)).run_once()
    assert report.errors == ()
    assert await stored_times(conn, HEARTBEATS) == [now - timedelta(hours=1)]


async def test_maintenance_expires_dispatch_keys(
    pools: list[asyncpg.Pool], conn: asyncpg.Connection, mode: StorageMode
) -> None:
    if mode != "postgres":
        pytest.skip("TimescaleDB's own job expires keys (test_cleanup)")
    policy = await read_policy(conn, mode, DISPATCHES)
    now = await server_now(conn)
    await insert_at(conn, mode, DISPATCHES, [now - policy.window - policy.interval - timedelta(hours=1), now])
    report = await Maintenance(pools[0], Settings(storage_mode=mode)).run_once()
    assert report.keys_expired == 1
    assert [r[0] for r in await conn.fetch("SELECT sent_at FROM fcm_dispatch_keys")] == [now]


async def test_run_forever_runs_at_once_and_stops_when_told(
    pools: list[asyncpg.Pool], conn: asyncpg.Connection, mode: StorageMode
) -> None:
    settings = Settings(storage_mode=mode, maintenance_interval=timedelta(hours=1))
    stop = asyncio.Event()
    task = asyncio.create_task(Maintenance(pools[0], settings).run_forever(stop))
    if mode == "postgres":
        # The first round runs immediately: it drops the partition the migration made below
        # the window.
        for _ in range(100):
            if not await conn.fetchval(
                "SELECT count(*) FROM telemetry_partition_bounds('fcm_dispatches')"
                " WHERE range_end <= now() - interval '2 days'"
            ):
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the first maintenance round did not run")
    stop.set()
    await asyncio.wait_for(task, timeout=5)


async def test_run_forever_survives_a_failing_round(pg_server: TestServer, mode: StorageMode) -> None:
    # An unmigrated database: every round fails, the task keeps going until stopped.
    url = await create_database(pg_server)
    pool = await asyncpg.create_pool(url, min_size=1, max_size=1)
    try:
        settings = Settings(storage_mode=mode, maintenance_interval=timedelta(milliseconds=20))
        stop = asyncio.Event()
        task = asyncio.create_task(Maintenance(pool, settings).run_forever(stop))
        await asyncio.sleep(0.2)
        assert not task.done()
        stop.set()
        await asyncio.wait_for(task, timeout=5)
    finally:
        await pool.close()


# --- the round as a list of steps -------------------------------------------------------------

POSTGRES_STEPS = [
    "partitions_ahead",
    "rollup_tables",
    "expired_partitions",
    "dispatch_key_expiry",
    "audit_expiry",
    "command_expiry",
    "install_verification",
    "rollout_funnel",
    "recent_days",
    "presence",
    "health",
]
# TimescaleDB's jobs keep chunks, keys and the continuous aggregates; the service heals the jobs.
TIMESCALE_STEPS = [
    "audit_expiry",
    "command_expiry",
    "install_verification",
    "rollout_funnel",
    "job_healing",
    "recent_days",
    "presence",
    "health",
]


async def test_a_round_runs_the_steps_of_its_mode_in_order_each_with_its_own_entry(
    pools: list[asyncpg.Pool], mode: StorageMode
) -> None:
    report = await Maintenance(pools[0], Settings(storage_mode=mode)).run_once()
    assert report.ran and report.errors == () and report.requeued == ()
    assert [s.name for s in report.steps] == (POSTGRES_STEPS if mode == "postgres" else TIMESCALE_STEPS)
    assert all(s.complete and s.errors == () and s.seconds >= 0 for s in report.steps)
    assert report.seconds >= sum(s.seconds for s in report.steps)


async def test_a_round_reads_the_rollup_mechanism_once(
    pools: list[asyncpg.Pool], mode: StorageMode, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service.retention import rollups

    calls = Counter[str]()
    read = rollups.mechanism_or_none

    async def counted(conn: asyncpg.Connection) -> object:
        calls["mechanism"] += 1
        return await read(conn)

    monkeypatch.setattr(rollups, "mechanism_or_none", counted)
    report = await Maintenance(pools[0], Settings(storage_mode=mode)).run_once()
    assert report.ran and report.errors == ()
    assert calls["mechanism"] == 1


async def _old_enrollment_events(conn: asyncpg.Connection, count: int) -> None:
    await conn.execute(
        "INSERT INTO enrollment_events (outcome, remote_addr, created_at)"
        " SELECT 'enrolled', 'a', now() - interval '100 days' FROM generate_series(1, $1)",
        count,
    )


async def test_a_step_stopped_at_its_bound_is_requeued_alone_until_its_work_is_done(
    pools: list[asyncpg.Pool], conn: asyncpg.Connection, mode: StorageMode, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service.retention import maintenance as module

    await _old_enrollment_events(conn, 7)
    settings = Settings(storage_mode=mode, maintenance_interval=timedelta(hours=1))
    instance = Maintenance(pools[0], settings)
    [audit_step] = [s for s in instance.steps if isinstance(s, module.AuditExpiry)]
    audit_step.batch_size, audit_step.max_batches = 2, 1

    report = await instance.run_once()
    assert report.errors == () and report.requeued == ("audit_expiry",)
    assert report.audit_expired["enrollment_events"] == 2
    assert [s.complete for s in report.steps if s.name == "audit_expiry"] == [False]

    # The re-queued step runs alone: no other step's entry, no health assessed.
    again = await instance.run_once(report.requeued)
    assert [s.name for s in again.steps] == ["audit_expiry"] and again.health is None
    assert again.audit_expired["enrollment_events"] == 2 and again.requeued == ("audit_expiry",)
    assert instance.last_health is report.health

    # run_forever: a full round (2 more), then the re-queued step alone (the last one), long
    # before the next full round (an hour away).
    monkeypatch.setattr(module, "REQUEUE_PAUSE", timedelta(milliseconds=10))
    stop = asyncio.Event()
    task = asyncio.create_task(instance.run_forever(stop))
    try:
        for _ in range(200):
            if not await conn.fetchval(
                "SELECT count(*) FROM enrollment_events WHERE created_at < now() - interval '90 days'"
            ):
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the re-queued step did not finish its work")
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=5)


async def test_a_failed_step_is_reported_and_not_requeued_and_the_others_still_run(
    pools: list[asyncpg.Pool], conn: asyncpg.Connection, mode: StorageMode
) -> None:
    await _old_enrollment_events(conn, 3)
    instance = Maintenance(pools[0], Settings(storage_mode=mode))
    [audit_step] = [s for s in instance.steps if s.name == "audit_expiry"]
    audit_step.batch_size = -1  # type: ignore[attr-defined]  # LIMIT -1: the database refuses it
    report = await instance.run_once()
    [entry] = [s for s in report.steps if s.name == "audit_expiry"]
    assert entry.errors and all("expiring audit rows failed" in e for e in entry.errors)
    assert report.errors == entry.errors and report.requeued == ()
    assert report.health is not None and [s.name for s in report.steps][-1] == "health"
