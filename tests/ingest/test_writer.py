"""The group-commit writer's guarantees, driven through each state transition on a real database."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from service.app import create_pool
from service.ingest.writer import GroupCommitWriter, WriteFailed, WriterClosed, WriterState
from service.metrics import Metrics
from tests.conftest import HeartbeatsLock, settings_for


@pytest.fixture
async def pool(db_url: str, mode: str) -> AsyncIterator[asyncpg.Pool]:
    p = await create_pool(db_url, settings_for(db_url, mode))  # type: ignore[arg-type]
    try:
        yield p
    finally:
        await p.close()


def make_writer(pool: asyncpg.Pool, **kwargs: object) -> GroupCommitWriter:
    defaults: dict[str, object] = {"batch_window": timedelta(milliseconds=2), "retry_base_delay": 0.02}
    return GroupCommitWriter(pool, Metrics(), **{**defaults, **kwargs})  # type: ignore[arg-type]


def heartbeat(device: str, ts: datetime, battery: int = 50) -> tuple[object, ...]:
    return (0, device, ts, "ok", battery, None, None, None)


T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)


async def terminate_others(url: str, keep: set[int]) -> int:
    conn = await asyncpg.connect(url)
    try:
        keep = keep | {conn.get_server_pid()}
        return int(
            await conn.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> ALL($1::int[])",
                list(keep),
            )
        )
    finally:
        await conn.close()


async def test_lifecycle_created_running_draining_stopped(pool: asyncpg.Pool) -> None:
    writer = make_writer(pool)
    assert writer.state is WriterState.CREATED
    with pytest.raises(WriterClosed):
        await writer.submit_heartbeats([heartbeat("d", T0)])
    await writer.start()
    assert writer.state is WriterState.RUNNING
    assert await writer.submit_heartbeats([heartbeat("d", T0)]) == [True]
    await writer.stop()
    assert writer.state is WriterState.STOPPED
    with pytest.raises(WriterClosed):
        await writer.submit_heartbeats([heartbeat("d", T0 + timedelta(seconds=30))])


async def test_many_requests_share_one_commit(pool: asyncpg.Pool) -> None:
    writer = make_writer(pool, batch_window=timedelta(milliseconds=50), flushers=1)
    await writer.start()
    try:
        results = await asyncio.gather(
            *(writer.submit_heartbeats([heartbeat(f"d{i}", T0)]) for i in range(200))
        )
    finally:
        await writer.stop()
    assert results == [[True]] * 200
    flushes = writer.metrics.batch_rows.collect()[0].samples
    count = next(s.value for s in flushes if s.name.endswith("_count"))
    assert count <= 5  # 200 requests, a handful of commits


async def test_stop_commits_everything_already_queued(pool: asyncpg.Pool, db_url: str) -> None:
    writer = make_writer(pool, batch_window=timedelta(milliseconds=200))
    await writer.start()
    pending = [asyncio.create_task(writer.submit_heartbeats([heartbeat(f"s{i}", T0)])) for i in range(100)]
    await asyncio.sleep(0.01)
    await writer.stop()
    assert await asyncio.gather(*pending) == [[True]] * 100
    conn = await asyncpg.connect(db_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM device_heartbeats") == 100
    finally:
        await conn.close()


async def test_lost_connection_mid_flush_is_retried_and_every_ack_is_stored(
    pool: asyncpg.Pool, db_url: str, heartbeats_lock: HeartbeatsLock
) -> None:
    """The flush is held inside its INSERT by a lock; its connection is killed there; the
    writer retries on a new connection and commits once the lock is released."""
    writer = make_writer(pool, retry_attempts=10)
    await writer.start()
    try:
        await heartbeats_lock.hold()
        tasks = [asyncio.create_task(writer.submit_heartbeats([heartbeat(f"k{i}", T0)])) for i in range(50)]
        await asyncio.sleep(0.3)  # flushes are now blocked mid-transaction
        killed = await terminate_others(db_url, {heartbeats_lock.conn.get_server_pid()})
        assert killed >= 1
        await asyncio.sleep(0.2)
        await heartbeats_lock.release()
        results = await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        await writer.stop()
    acked = [f"k{i}" for i, r in enumerate(results) if r == [True]]
    assert len(acked) == 50, results
    conn = await asyncpg.connect(db_url)
    try:
        stored = {r[0] for r in await conn.fetch("SELECT device_id FROM device_heartbeats")}
    finally:
        await conn.close()
    assert set(acked) <= stored
    assert writer.metrics.flush_retries._value.get() >= 1  # type: ignore[attr-defined]


async def test_batch_that_cannot_commit_fails_its_callers_and_stores_nothing(
    pool: asyncpg.Pool, db_url: str, heartbeats_lock: HeartbeatsLock
) -> None:
    writer = make_writer(pool, retry_attempts=2, retry_base_delay=0.05)
    await writer.start()
    try:
        await heartbeats_lock.hold()
        tasks = [asyncio.create_task(writer.submit_heartbeats([heartbeat(f"f{i}", T0)])) for i in range(10)]
        for _ in range(6):  # kill every attempt while the lock holds it before commit
            await asyncio.sleep(0.1)
            await terminate_others(db_url, {heartbeats_lock.conn.get_server_pid()})
        results = await asyncio.gather(*tasks, return_exceptions=True)
        await heartbeats_lock.release()
    finally:
        await writer.stop()
    assert all(isinstance(r, WriteFailed) and r.transient for r in results), results
    conn = await asyncpg.connect(db_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM device_heartbeats") == 0
    finally:
        await conn.close()


async def test_a_refused_request_fails_alone(pool: asyncpg.Pool, db_url: str) -> None:
    writer = make_writer(pool, batch_window=timedelta(milliseconds=50))
    await writer.start()
    try:
        good = [asyncio.create_task(writer.submit_heartbeats([heartbeat(f"g{i}", T0)])) for i in range(5)]
        bad = asyncio.create_task(writer.submit_heartbeats([heartbeat("bad", T0, battery=500)]))
        results = await asyncio.gather(*good)
        with pytest.raises(WriteFailed) as info:
            await bad
    finally:
        await writer.stop()
    assert results == [[True]] * 5
    assert not info.value.transient
    conn = await asyncpg.connect(db_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM device_heartbeats") == 5
    finally:
        await conn.close()
