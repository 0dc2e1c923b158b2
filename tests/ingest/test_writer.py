"""The group-commit writer's guarantees, driven through each state transition on a real database."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from service.app import create_pool
from service.ingest.rows import DispatchRow, DownloadRow, HeartbeatRow
from service.ingest.writer import (
    GroupCommitWriter,
    WriteFailed,
    WriterClosed,
    WriterState,
)
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


def heartbeat(device: str, ts: datetime, battery: int = 50) -> HeartbeatRow:
    return HeartbeatRow(device, ts, "ok", battery, None, None, None)


T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)


@pytest.mark.parametrize(
    ("argument", "value"),
    [
        ("batch_window", timedelta(0)),
        ("batch_max_rows", 0),
        ("queue_max_rows", 0),
        ("bucket_seconds", 0),
        ("retry_attempts", 0),
        ("retry_base_delay", -0.1),
        ("retry_max_delay", 0.01),
        ("flushers", 0),
        ("ack_timeout", 0),
    ],
)
async def test_an_argument_out_of_range_is_refused_by_name_before_anything_runs(
    pool: asyncpg.Pool, argument: str, value: object
) -> None:
    with pytest.raises(ValueError, match=f"^{argument} is expected"):
        make_writer(pool, **{argument: value})


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


def download(device: str, ts: datetime, size: int | None = 1024, id_: int = 0) -> DownloadRow:
    return DownloadRow(
        id_ or abs(hash((device, ts, size))) % 2**62 + 1, ts, "build-1", device, None, "completed", size
    )


async def stored_count(db_url: str, table: str) -> int:
    conn = await asyncpg.connect(db_url)
    try:
        return int(await conn.fetchval(f"SELECT count(*) FROM {table}"))
    finally:
        await conn.close()


def successful_flushes(writer: GroupCommitWriter) -> int:
    samples = writer.metrics.batch_rows.collect()[0].samples
    return int(next(s.value for s in samples if s.name.endswith("_count")))


async def test_a_request_that_breaks_encoding_fails_alone_and_the_rest_of_its_batch_commits(
    pool: asyncpg.Pool, db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """bytes_downloaded 2^63 does not fit a bigint: asyncpg's encoder raises (no database error)
    in the middle of the batch's COPY. Validation would refuse it; the writer must cope anyway."""
    writer = make_writer(pool, batch_window=timedelta(milliseconds=100), flushers=1)
    await writer.start()
    try:
        good_heartbeats = [
            asyncio.create_task(writer.submit_heartbeats([heartbeat(f"e{i}", T0)])) for i in range(10)
        ]
        good_downloads = [
            asyncio.create_task(writer.submit_downloads([download(f"e{i}", T0)])) for i in range(10)
        ]
        bad = asyncio.create_task(
            writer.submit_downloads([download("evil", T0, size=2**63)], request_id="req-evil-1")
        )
        assert await asyncio.gather(*good_heartbeats) == [[True]] * 10
        assert await asyncio.gather(*good_downloads) == [[True]] * 10
        with pytest.raises(WriteFailed) as info:
            await bad
    finally:
        await writer.stop()
    assert not info.value.transient
    assert info.value.request_id == "req-evil-1"
    assert "Overflow" not in str(info.value) and "int" not in str(info.value)
    assert writer.metrics.flush_retries._value.get() == 0  # type: ignore[attr-defined]
    assert await stored_count(db_url, "device_heartbeats") == 10
    assert await stored_count(db_url, "apk_download_events") == 10
    (logged,) = [r for r in caplog.records if "req-evil-1" in r.getMessage()]
    assert logged.exc_info is not None and isinstance(logged.exc_info[1], OverflowError | ValueError)


async def test_a_value_the_encoder_cannot_take_is_refused_at_once_not_retried(
    pool: asyncpg.Pool, db_url: str
) -> None:
    """In a binary COPY asyncpg's encoders raise TypeError/OverflowError/ValueError as they are:
    the row's fault, so no retry (retry_base_delay=1 s would show) and no one else fails."""
    writer = make_writer(pool, batch_window=timedelta(milliseconds=50), flushers=1, retry_base_delay=1.0)
    await writer.start()
    try:
        good = [asyncio.create_task(writer.submit_heartbeats([heartbeat(f"t{i}", T0)])) for i in range(5)]
        bad = asyncio.create_task(writer.submit_heartbeats([heartbeat("t-bad", T0, battery="many")]))  # type: ignore[arg-type]
        started = asyncio.get_running_loop().time()
        with pytest.raises(WriteFailed) as info:
            await bad
        assert asyncio.get_running_loop().time() - started < 1.0  # no backoff: not retried
        assert await asyncio.gather(*good) == [[True]] * 5
    finally:
        await writer.stop()
    assert not info.value.transient
    assert writer.metrics.flush_retries._value.get() == 0  # type: ignore[attr-defined]
    assert await stored_count(db_url, "device_heartbeats") == 5


async def test_one_bad_request_among_64_costs_a_logarithmic_number_of_transactions(
    pool: asyncpg.Pool, db_url: str
) -> None:
    writer = make_writer(pool, batch_window=timedelta(milliseconds=200), flushers=1)
    await writer.start()
    try:
        submissions = [writer.submit_heartbeats([heartbeat(f"b{i}", T0)]) for i in range(63)]
        submissions.insert(37, writer.submit_heartbeats([heartbeat("b-bad", T0, battery=2**40)]))
        results = await asyncio.gather(*submissions, return_exceptions=True)
    finally:
        await writer.stop()
    assert isinstance(results.pop(37), WriteFailed)
    assert results == [[True]] * 63
    assert await stored_count(db_url, "device_heartbeats") == 63
    # bisection: one committed half per level (log2 64 = 6), not one transaction per request
    assert successful_flushes(writer) <= 7


async def test_several_bad_requests_in_one_batch_each_fail_alone(pool: asyncpg.Pool, db_url: str) -> None:
    writer = make_writer(pool, batch_window=timedelta(milliseconds=100), flushers=1)
    await writer.start()
    try:
        submissions = []
        for i in range(20):
            if i % 7 == 3:  # refused by the database (smallint range) or by the encoder (int8)
                row = heartbeat(f"m{i}", T0, battery=500) if i % 2 else heartbeat(f"m{i}", T0, battery=2**70)
                submissions.append(writer.submit_heartbeats([row], request_id=f"bad-{i}"))
            else:
                submissions.append(writer.submit_heartbeats([heartbeat(f"m{i}", T0)]))
        results = await asyncio.gather(*submissions, return_exceptions=True)
    finally:
        await writer.stop()
    failed = {i: r for i, r in enumerate(results) if isinstance(r, BaseException)}
    assert sorted(failed) == [3, 10, 17]
    assert all(isinstance(r, WriteFailed) and r.request_id == f"bad-{i}" for i, r in failed.items())
    assert await stored_count(db_url, "device_heartbeats") == 17


async def test_one_batch_of_every_kind_commits_together_and_answers_each_request(
    pool: asyncpg.Pool, db_url: str
) -> None:
    writer = make_writer(pool, batch_window=timedelta(milliseconds=100), flushers=1)
    await writer.start()
    try:
        dispatch = DispatchRow("mixed-1", "mixed-dev", "ping", {"n": 1}, T0, None)
        beats, first, again, downloads = await asyncio.gather(
            writer.submit_heartbeats([heartbeat("mixed-dev", T0), heartbeat("mixed-dev", T0)]),
            writer.submit_dispatches([dispatch, dispatch]),
            writer.submit_dispatches([dispatch]),
            writer.submit_downloads([download("mixed-dev", T0, id_=7), download("mixed-dev", T0, id_=7)]),
        )
    finally:
        await writer.stop()
    assert successful_flushes(writer) == 1
    assert beats == [True, False] and downloads == [True, False]
    assert [o.created for o in first + again] == [True, False, False]
    assert {o.dispatch.id for o in first + again} == {first[0].dispatch.id}
    written = {
        s.labels["table"]: s.value
        for s in writer.metrics.rows_written.collect()[0].samples
        if s.name.endswith("_total")
    }
    assert written == {"device_heartbeats": 1, "fcm_dispatches": 1, "apk_download_events": 1}
