"""Changing a window: one retention job per table in timescale mode, stored for every instance."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import asyncpg
import pytest

from service.db.rollups import ROLLUPS
from service.db.time_series import DISPATCH_KEY_EXPIRY_PROCEDURE, DOWNLOADS, HEARTBEATS, TIME_SERIES_TABLES
from service.retention.policies import (
    SchemaNotReadyError,
    UnknownTableError,
    detect_storage_mode,
    read_policies,
    read_policy,
    resolve_table,
    set_window,
)
from service.retention.show import collect, table_fields
from service.settings import Settings, StorageMode
from tests.support.cluster import TestServer, create_database, migrator_for

LOOKAHEAD = Settings().partition_lookahead


async def retention_jobs(conn: asyncpg.Connection) -> dict[str, list[timedelta]]:
    rows = await conn.fetch(
        "SELECT hypertable_name, (config->>'drop_after')::interval AS drop_after"
        " FROM timescaledb_information.jobs WHERE proc_name = 'policy_retention' ORDER BY job_id"
    )
    jobs: dict[str, list[timedelta]] = {}
    for r in rows:
        jobs.setdefault(r["hypertable_name"], []).append(r["drop_after"])
    return jobs


async def stored_windows(conn: asyncpg.Connection) -> dict[str, timedelta]:
    rows = await conn.fetch(
        "SELECT table_name, drop_after FROM retention_policies WHERE partition_interval IS NOT NULL"
    )
    return {r["table_name"]: r["drop_after"] for r in rows}


async def test_set_then_show_shows_the_new_window(conn: asyncpg.Connection, mode: StorageMode) -> None:
    await set_window(conn, mode, HEARTBEATS, timedelta(hours=36), LOOKAHEAD)
    tables, _ = await collect(conn, mode, Settings())
    shown = {t.table: dict(table_fields(t)) for t in tables}
    assert shown["device_heartbeats"]["window"] == "1d12h"
    assert shown["fcm_dispatches"]["window"] == "2d"
    assert shown["apk_download_events"]["window"] == "7d"
    assert (await stored_windows(conn))["device_heartbeats"] == timedelta(hours=36)


async def test_any_number_of_sets_leaves_exactly_one_retention_job_per_table(
    conn: asyncpg.Connection, mode: StorageMode
) -> None:
    # Heartbeat windows stay at or above the hourly rollup's refresh reach (the guard).
    for window in (timedelta(hours=28), timedelta(hours=90), timedelta(hours=30), timedelta(days=3)):
        for table in TIME_SERIES_TABLES:
            await set_window(conn, mode, table, window, LOOKAHEAD)
    windows = await stored_windows(conn)
    assert {t.name: windows[t.name] for t in TIME_SERIES_TABLES} == {
        t.name: timedelta(days=3) for t in TIME_SERIES_TABLES
    }
    if mode == "timescale":
        assert await retention_jobs(conn) == {
            **{t.name: [timedelta(days=3)] for t in TIME_SERIES_TABLES},
            **{r.name: [r.default_window] for r in ROLLUPS},
        }
    policies = await read_policies(conn, mode)
    assert [p.window for p in policies] == [timedelta(days=3)] * len(TIME_SERIES_TABLES)


async def test_concurrent_sets_leave_one_job_and_an_agreeing_row(
    db_url: str, conn: asyncpg.Connection, mode: StorageMode
) -> None:
    if mode == "timescale":
        # The hardest case: no job yet, so every `set` wants to add one.
        await conn.execute("SELECT remove_retention_policy('device_heartbeats')")
    others = [await asyncpg.connect(db_url) for _ in range(6)]
    try:
        windows = [timedelta(hours=h) for h in (30, 40, 50, 60, 70, 80)]
        await asyncio.gather(
            *(set_window(c, mode, HEARTBEATS, w, LOOKAHEAD) for c, w in zip(others, windows, strict=True))
        )
    finally:
        for c in others:
            await c.close()
    stored = (await stored_windows(conn))["device_heartbeats"]
    assert stored in windows
    if mode == "timescale":
        assert (await retention_jobs(conn))["device_heartbeats"] == [stored]


async def test_set_re_adds_a_removed_timescale_job(conn: asyncpg.Connection, mode: StorageMode) -> None:
    if mode != "timescale":
        pytest.skip("timescale only")
    await conn.execute("SELECT remove_retention_policy('apk_download_events')")
    assert (await read_policy(conn, mode, DOWNLOADS)).job_id is None
    policy = await set_window(conn, mode, DOWNLOADS, timedelta(days=5), LOOKAHEAD)
    assert policy.job_id is not None
    assert (await retention_jobs(conn))["apk_download_events"] == [timedelta(days=5)]


async def test_set_keeps_the_timescale_job_and_its_schedule(
    conn: asyncpg.Connection, mode: StorageMode
) -> None:
    if mode != "timescale":
        pytest.skip("timescale only")
    before = await read_policy(conn, mode, HEARTBEATS)
    schedule = "SELECT schedule_interval FROM timescaledb_information.jobs WHERE job_id = $1"
    interval_before = await conn.fetchval(schedule, before.job_id)
    after = await set_window(conn, mode, HEARTBEATS, timedelta(hours=30), LOOKAHEAD)
    assert after.job_id == before.job_id
    assert await conn.fetchval(schedule, after.job_id) == interval_before


async def test_postgres_set_to_a_longer_window_creates_the_partitions_it_needs(
    conn: asyncpg.Connection, mode: StorageMode
) -> None:
    if mode != "postgres":
        pytest.skip("TimescaleDB creates chunks on demand")
    await set_window(conn, mode, HEARTBEATS, timedelta(days=4), LOOKAHEAD)
    # A write at the new window's oldest edge finds its partition at once.
    await conn.execute(
        "INSERT INTO device_heartbeats (device_id, bucket_start, ts, status, battery_pct)"
        " VALUES ('edge', now() - interval '4 days', now() - interval '4 days', 'ok', 1)"
    )


def test_unknown_table_names_the_valid_ones() -> None:
    with pytest.raises(UnknownTableError) as info:
        resolve_table("fcm_dispatch_keys")
    assert "device_heartbeats, fcm_dispatches, apk_download_events" in str(info.value)


async def test_set_refuses_a_zero_window(conn: asyncpg.Connection, mode: StorageMode) -> None:
    with pytest.raises(ValueError):
        await set_window(conn, mode, HEARTBEATS, timedelta(0), LOOKAHEAD)
    assert (await stored_windows(conn))["device_heartbeats"] == timedelta(days=2)


async def test_mode_detection_refuses_an_unmigrated_database(
    pg_server: TestServer, mode: StorageMode
) -> None:
    url = await create_database(pg_server)
    conn = await asyncpg.connect(url)
    try:
        with pytest.raises(SchemaNotReadyError):
            await detect_storage_mode(conn, mode)
    finally:
        await conn.close()


# --- migrations: no orphaned jobs -------------------------------------------------------------


async def job_inventory(conn: asyncpg.Connection) -> list[tuple[str, str | None]]:
    """(proc, hypertable) of every job that is not TimescaleDB's own housekeeping."""
    rows = await conn.fetch(
        "SELECT proc_name, hypertable_name FROM timescaledb_information.jobs"
        " WHERE job_id >= 1000 ORDER BY proc_name, hypertable_name"
    )
    return [(r["proc_name"], r["hypertable_name"]) for r in rows]


async def orphaned_jobs(conn: asyncpg.Connection) -> list[int]:
    """Jobs whose procedure or hypertable no longer exists."""
    rows = await conn.fetch(
        "SELECT job_id FROM timescaledb_information.jobs j WHERE job_id >= 1000 AND ("
        " to_regproc(format('%I.%I', proc_schema, proc_name)) IS NULL OR"
        " (hypertable_name IS NOT NULL AND NOT EXISTS (SELECT 1 FROM timescaledb_information.hypertables h"
        "   WHERE h.hypertable_schema = j.hypertable_schema AND h.hypertable_name = j.hypertable_name)"
        "  AND NOT EXISTS (SELECT 1 FROM timescaledb_information.continuous_aggregates c"
        "   WHERE c.view_schema = j.hypertable_schema AND c.view_name = j.hypertable_name)))"
    )
    return [r[0] for r in rows]


EXPECTED_JOBS = sorted(
    [("policy_retention", t.name) for t in TIME_SERIES_TABLES]
    + [(DISPATCH_KEY_EXPIRY_PROCEDURE, None)]
    + [(p, r.name) for r in ROLLUPS for p in ("policy_refresh_continuous_aggregate", "policy_retention")]
    + [("policy_compression", HEARTBEATS.name)]
)


async def key_expiry_objects(conn: asyncpg.Connection) -> int:
    return await conn.fetchval(
        "SELECT count(*) FROM pg_proc WHERE proname IN"
        " ('telemetry_dispatch_key_cutoff', 'telemetry_expire_dispatch_keys', $1)",
        DISPATCH_KEY_EXPIRY_PROCEDURE,
    )


async def test_downgrade_then_upgrade_leaves_no_orphaned_job(db_url: str, mode: StorageMode) -> None:
    migrator = migrator_for(db_url, mode)
    conn = await asyncpg.connect(db_url)
    try:
        for table in TIME_SERIES_TABLES:
            await set_window(conn, mode, table, timedelta(days=3), LOOKAHEAD)
        # Just below the key-expiry revision, then all the way down.
        for target in ("a43a2b52588a", "base"):
            await asyncio.to_thread(migrator.downgrade, target)
            if mode == "timescale":
                assert await orphaned_jobs(conn) == []
                remaining = await job_inventory(conn)
                assert (DISPATCH_KEY_EXPIRY_PROCEDURE, None) not in remaining
            assert await key_expiry_objects(conn) == 0
            await asyncio.to_thread(migrator.upgrade, "head")
            assert await key_expiry_objects(conn) == 3
            if mode == "timescale":
                assert await orphaned_jobs(conn) == []
                assert await job_inventory(conn) == EXPECTED_JOBS
    finally:
        await conn.close()
