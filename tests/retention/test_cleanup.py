"""`run` drops exactly the ranges past the window, counts what it dropped, and expires keys."""

from __future__ import annotations

from datetime import timedelta

import asyncpg
import pytest

from service.db.retained import RetainedTable
from service.db.time_series import (
    DISPATCH_KEY_EXPIRY_PROCEDURE,
    DISPATCHES,
    DOWNLOADS,
    HEARTBEATS,
    TIME_SERIES_TABLES,
)
from service.retention.cleanup import clean_table, expire_dispatch_keys, run_cleanup
from service.retention.policies import read_policy
from service.retention.rollups import refresh_tables
from service.settings import StorageMode
from tests.retention.history import expired, insert_at, range_of, server_now, spread, stored_times


@pytest.mark.parametrize("table", TIME_SERIES_TABLES, ids=lambda t: t.name)
async def test_run_drops_rows_past_the_window_and_keeps_the_rest_by_the_range_rule(
    quiet: asyncpg.Connection, mode: StorageMode, table: RetainedTable
) -> None:
    conn = quiet
    policy = await read_policy(conn, mode, table)
    times = spread(await server_now(conn), policy.window, policy.interval)
    await insert_at(conn, mode, table, times)
    if mode == "postgres":
        # Raw heartbeats go only once the rollup has read them (the guard).
        assert (await refresh_tables(conn)).errors == []

    result = await clean_table(conn, mode, table)

    assert result.error is None
    assert result.cutoff is not None
    gone = [t for t in times if expired(t, policy.interval, result.cutoff)]
    kept = [t for t in times if not expired(t, policy.interval, result.cutoff)]
    assert gone and kept, "the data must straddle the cutoff for this test to say anything"
    assert await stored_times(conn, table) == kept
    # Every kept row is inside the window or in a range that still reaches into it; every row
    # inside the window is kept.
    assert all(t >= result.cutoff - policy.interval for t in kept)
    assert all(t < result.cutoff for t in gone)
    assert result.rows == len(gone)
    dropped_ranges = {(d.range_start, d.range_end) for d in result.dropped}
    assert {range_of(t, policy.interval) for t in gone} <= dropped_ranges
    assert all(end <= result.cutoff for _, end in dropped_ranges)


async def test_dry_run_drops_nothing_and_lists_what_run_then_drops(
    quiet: asyncpg.Connection, mode: StorageMode
) -> None:
    conn = quiet
    policy = await read_policy(conn, mode, HEARTBEATS)
    times = spread(await server_now(conn), policy.window, policy.interval)
    await insert_at(conn, mode, HEARTBEATS, times)

    preview = await run_cleanup(conn, mode, [HEARTBEATS], dry_run=True)
    assert await stored_times(conn, HEARTBEATS) == times
    real = await run_cleanup(conn, mode, [HEARTBEATS])

    assert preview.ok and real.ok
    (would,), (did,) = preview.tables, real.tables
    assert would.dry_run and not did.dry_run
    assert would.rows == did.rows and would.rows
    assert [d.name for d in would.dropped] == [d.name for d in did.dropped]
    assert did.remaining == would.remaining - len(did.dropped)


async def test_a_second_run_finds_nothing_to_drop(quiet: asyncpg.Connection, mode: StorageMode) -> None:
    conn = quiet
    policy = await read_policy(conn, mode, DOWNLOADS)
    await insert_at(conn, mode, DOWNLOADS, spread(await server_now(conn), policy.window, policy.interval))
    first = await clean_table(conn, mode, DOWNLOADS)
    second = await clean_table(conn, mode, DOWNLOADS)
    assert first.dropped and first.rows
    assert second.dropped == () and second.rows == 0


async def test_dispatch_keys_expire_after_window_plus_interval_and_not_before(
    quiet: asyncpg.Connection, mode: StorageMode
) -> None:
    conn = quiet
    policy = await read_policy(conn, mode, DISPATCHES)
    now = await server_now(conn)
    key_edge = now - policy.window - policy.interval
    old = [key_edge - timedelta(minutes=1), key_edge - timedelta(days=1)]
    young = [key_edge + timedelta(minutes=1), now - policy.window, now]
    await insert_at(conn, mode, DISPATCHES, old + young)

    report = await run_cleanup(conn, mode, [DISPATCHES])

    assert report.ok and report.keys is not None
    assert report.keys.expired == len(old)
    keys = [r[0] for r in await conn.fetch("SELECT sent_at FROM fcm_dispatch_keys ORDER BY 1")]
    assert keys == [t for t in sorted(young) if t >= report.keys.cutoff]
    # No dispatch row is left without its key: idempotency holds for as long as a row exists.
    surviving_dispatches = await stored_times(conn, DISPATCHES)
    assert set(surviving_dispatches) <= set(keys)


async def test_key_expiry_dry_run_counts_without_deleting(
    quiet: asyncpg.Connection, mode: StorageMode
) -> None:
    conn = quiet
    policy = await read_policy(conn, mode, DISPATCHES)
    now = await server_now(conn)
    await insert_at(conn, mode, DISPATCHES, [now - policy.window - policy.interval - timedelta(hours=1), now])
    preview = await expire_dispatch_keys(conn, dry_run=True)
    assert preview.expired == 1
    assert await conn.fetchval("SELECT count(*) FROM fcm_dispatch_keys") == 2


async def test_key_expiry_works_in_bounded_batches(quiet: asyncpg.Connection, mode: StorageMode) -> None:
    conn = quiet
    policy = await read_policy(conn, mode, DISPATCHES)
    old = (await server_now(conn)) - policy.window - policy.interval - timedelta(hours=1)
    await insert_at(conn, mode, DISPATCHES, [old - timedelta(seconds=i) for i in range(25)])
    first = await expire_dispatch_keys(conn, batch_size=10, max_batches=2)
    assert (first.expired, first.complete) == (20, False)
    rest = await expire_dispatch_keys(conn, batch_size=10)
    assert (rest.expired, rest.complete) == (5, True)
    assert await conn.fetchval("SELECT count(*) FROM fcm_dispatch_keys") == 0


async def test_timescale_expires_keys_by_itself_with_its_scheduled_job(
    quiet: asyncpg.Connection, mode: StorageMode
) -> None:
    if mode != "timescale":
        pytest.skip("postgres mode expires keys in the service's maintenance (test_maintenance)")
    conn = quiet
    policy = await read_policy(conn, mode, DISPATCHES)
    now = await server_now(conn)
    await insert_at(conn, mode, DISPATCHES, [now - policy.window - policy.interval - timedelta(hours=1), now])
    job_id = await conn.fetchval(
        "SELECT job_id FROM timescaledb_information.jobs WHERE proc_name = $1", DISPATCH_KEY_EXPIRY_PROCEDURE
    )
    await conn.execute("CALL run_job($1)", job_id)
    assert [r[0] for r in await conn.fetch("SELECT sent_at FROM fcm_dispatch_keys")] == [now]


async def test_timescale_run_without_a_retention_job_fails_with_a_clear_error(
    quiet: asyncpg.Connection, mode: StorageMode
) -> None:
    if mode != "timescale":
        pytest.skip("postgres mode has no retention jobs")
    await quiet.execute("SELECT remove_retention_policy('device_heartbeats')")
    report = await run_cleanup(quiet, mode, [HEARTBEATS, DOWNLOADS])
    assert not report.ok
    failed, fine = report.tables
    assert failed.error is not None and "retention set device_heartbeats" in failed.error
    assert fine.error is None
