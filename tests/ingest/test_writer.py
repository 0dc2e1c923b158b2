"""The group-commit writer's guarantees, driven through each state transition on a real database."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from service.app import row_merges
from service.commands.dispatches import DispatchRow
from service.db.time_series import HEARTBEATS
from service.ingest.heartbeats import HeartbeatRow
from service.ingest.writer import (
    GroupCommitWriter,
    WriteFailed,
    WriteFaulted,
    WriterClosed,
    WriterState,
)
from service.metrics import Metrics
from service.retention.cleanup import run_cleanup
from service.retention.policies import set_window
from service.rollout.downloads import DownloadRow
from service.settings import Settings
from tests.support.app import HeartbeatsLock


def make_writer(pool: asyncpg.Pool, bucket_seconds: int = 10, **kwargs: object) -> GroupCommitWriter:
    """The service's writer (its merges, `service.app.row_merges`) with test timings."""
    defaults: dict[str, object] = {"batch_window": timedelta(milliseconds=2), "retry_base_delay": 0.02}
    merges = row_merges(bucket_seconds)
    return GroupCommitWriter(pool, Metrics(), merges, **{**defaults, **kwargs})  # type: ignore[arg-type]


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
        await writer.submit([heartbeat("d", T0)])
    await writer.start()
    assert writer.state is WriterState.RUNNING
    assert await writer.submit([heartbeat("d", T0)]) == [True]
    await writer.stop()
    assert writer.state is WriterState.STOPPED
    with pytest.raises(WriterClosed):
        await writer.submit([heartbeat("d", T0 + timedelta(seconds=30))])


async def test_many_requests_share_one_commit(pool: asyncpg.Pool) -> None:
    writer = make_writer(pool, batch_window=timedelta(milliseconds=50), flushers=1)
    await writer.start()
    try:
        results = await asyncio.gather(*(writer.submit([heartbeat(f"d{i}", T0)]) for i in range(200)))
    finally:
        await writer.stop()
    assert results == [[True]] * 200
    flushes = writer.metrics.batch_rows.collect()[0].samples
    count = next(s.value for s in flushes if s.name.endswith("_count"))
    assert count <= 5  # 200 requests, a handful of commits


async def test_stop_commits_everything_already_queued(pool: asyncpg.Pool, db_url: str) -> None:
    writer = make_writer(pool, batch_window=timedelta(milliseconds=200))
    await writer.start()
    pending = [asyncio.create_task(writer.submit([heartbeat(f"s{i}", T0)])) for i in range(100)]
    await asyncio.sleep(0.01)
    await writer.stop()
    assert await asyncio.gather(*pending) == [[True]] * 100
    assert await pool.fetchval("SELECT count(*) FROM device_heartbeats") == 100


async def test_lost_connection_mid_flush_is_retried_and_every_ack_is_stored(
    pool: asyncpg.Pool, db_url: str, heartbeats_lock: HeartbeatsLock
) -> None:
    """The flush is held inside its INSERT by a lock; its connection is killed there; the
    writer retries on a new connection and commits once the lock is released."""
    writer = make_writer(pool, retry_attempts=10)
    await writer.start()
    try:
        await heartbeats_lock.hold()
        tasks = [asyncio.create_task(writer.submit([heartbeat(f"k{i}", T0)])) for i in range(50)]
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
        tasks = [asyncio.create_task(writer.submit([heartbeat(f"f{i}", T0)])) for i in range(10)]
        for _ in range(6):  # kill every attempt while the lock holds it before commit
            await asyncio.sleep(0.1)
            await terminate_others(db_url, {heartbeats_lock.conn.get_server_pid()})
        results = await asyncio.gather(*tasks, return_exceptions=True)
        await heartbeats_lock.release()
    finally:
        await writer.stop()
    assert all(isinstance(r, WriteFailed) and r.transient for r in results), results
    conn = await asyncpg.connect(db_url)  # the pool's connections were the ones made to fail
    try:
        assert await conn.fetchval("SELECT count(*) FROM device_heartbeats") == 0
    finally:
        await conn.close()


async def test_a_refused_request_fails_alone(pool: asyncpg.Pool, db_url: str) -> None:
    writer = make_writer(pool, batch_window=timedelta(milliseconds=50))
    await writer.start()
    try:
        good = [asyncio.create_task(writer.submit([heartbeat(f"g{i}", T0)])) for i in range(5)]
        bad = asyncio.create_task(writer.submit([heartbeat("bad", T0, battery=500)]))
        results = await asyncio.gather(*good)
        with pytest.raises(WriteFailed) as info:
            await bad
    finally:
        await writer.stop()
    assert results == [[True]] * 5
    assert not info.value.transient
    assert await pool.fetchval("SELECT count(*) FROM device_heartbeats") == 5


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
        good_heartbeats = [asyncio.create_task(writer.submit([heartbeat(f"e{i}", T0)])) for i in range(10)]
        good_downloads = [asyncio.create_task(writer.submit([download(f"e{i}", T0)])) for i in range(10)]
        bad = asyncio.create_task(writer.submit([download("evil", T0, size=2**63)], request_id="req-evil-1"))
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
        good = [asyncio.create_task(writer.submit([heartbeat(f"t{i}", T0)])) for i in range(5)]
        bad = asyncio.create_task(writer.submit([heartbeat("t-bad", T0, battery="many")]))  # type: ignore[arg-type]
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
        submissions = [writer.submit([heartbeat(f"b{i}", T0)]) for i in range(63)]
        submissions.insert(37, writer.submit([heartbeat("b-bad", T0, battery=2**40)]))
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
                submissions.append(writer.submit([row], request_id=f"bad-{i}"))
            else:
                submissions.append(writer.submit([heartbeat(f"m{i}", T0)]))
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
            writer.submit([heartbeat("mixed-dev", T0), heartbeat("mixed-dev", T0)]),
            writer.submit([dispatch, dispatch]),
            writer.submit([dispatch]),
            writer.submit([download("mixed-dev", T0, id_=7), download("mixed-dev", T0, id_=7)]),
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


async def raise_for_device(db_url: str, device_id: str, sqlstate: str) -> None:
    """A trigger that makes the database refuse `device_id`'s heartbeats with `sqlstate`, as if
    the condition (a full disk, an internal error) struck exactly that row."""
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute(f"""
            CREATE FUNCTION refuse_device() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.device_id = '{device_id}' THEN
                    RAISE EXCEPTION 'refused for the test' USING ERRCODE = '{sqlstate}';
                END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER refuse_device BEFORE INSERT ON device_heartbeats
                FOR EACH ROW EXECUTE FUNCTION refuse_device();
        """)
    finally:
        await conn.close()


async def drop_refusal(db_url: str) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute("DROP TRIGGER refuse_device ON device_heartbeats; DROP FUNCTION refuse_device()")
    finally:
        await conn.close()


async def test_a_full_disk_is_retried_whole_never_bisected_logged_once_and_recovers_without_restart(
    pool: asyncpg.Pool, db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A disk_full (53100) is no row's fault even when one row meets it: the batch is retried
    whole (`retry_attempts` commits tried, not O(log N) halves), every request gets
    `WriteFailed(transient=True)`, and the log says so once; the next batch after it clears
    commits and the log says it recovered."""
    await raise_for_device(db_url, "full-1", "53100")
    writer = make_writer(pool, batch_window=timedelta(milliseconds=100), flushers=1, retry_attempts=3)
    await writer.start()
    try:
        results = await asyncio.gather(
            *(writer.submit([heartbeat(f"full-{i}", T0)]) for i in range(16)),
            return_exceptions=True,
        )
        again = await asyncio.gather(
            *(writer.submit([heartbeat(f"full-{i}", T0)]) for i in range(4)),
            return_exceptions=True,
        )
        await drop_refusal(db_url)
        recovered = await writer.submit([heartbeat("full-1", T0)])
    finally:
        await writer.stop()
    assert all(isinstance(r, WriteFailed) and r.transient for r in results + again), results + again
    assert writer.metrics.flush_retries._value.get() == 2 * 2  # type: ignore[attr-defined]
    assert recovered == [True]
    assert await stored_count(db_url, "device_heartbeats") == 1
    outage = [r.getMessage() for r in caplog.records if "disk" in r.getMessage()]
    assert len(outage) == 2 and "recovered" in outage[1], outage
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR and r.exc_info]


async def test_a_fault_that_is_not_the_rows_data_fails_its_request_alone_as_a_fault_not_a_refusal(
    pool: asyncpg.Pool, db_url: str
) -> None:
    """An internal error (XX000) met by one request's rows: bisection still keeps the others,
    but that request gets `WriteFaulted` (500), not a refusal of its data (422)."""
    await raise_for_device(db_url, "fault-3", "XX000")
    writer = make_writer(pool, batch_window=timedelta(milliseconds=100), flushers=1)
    await writer.start()
    try:
        results = await asyncio.gather(
            *(writer.submit([heartbeat(f"fault-{i}", T0)], request_id=f"f-{i}") for i in range(8)),
            return_exceptions=True,
        )
    finally:
        await writer.stop()
    faulted = results.pop(3)
    assert isinstance(faulted, WriteFaulted) and faulted.request_id == "f-3", faulted
    assert results == [[True]] * 7
    assert writer.metrics.flush_retries._value.get() == 0  # type: ignore[attr-defined]
    assert await stored_count(db_url, "device_heartbeats") == 7


async def test_a_row_whose_partition_is_gone_fails_alone_after_one_ensure_and_its_batch_commits(
    pool: asyncpg.Pool, db_url: str, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Postgres mode, the window shortened to 36 h and retention run: a heartbeat 47 h old (past
    validation here: it goes straight to the writer) has no partition, and creating the
    partitions the windows call for does not make one. That request alone fails, as a refused
    row (no retries: retry_base_delay=1 s would show); the 20 others of its batch commit."""
    if mode != "postgres":
        pytest.skip("partitions are created by the service in postgres mode only")
    conn = await asyncpg.connect(db_url)
    try:
        await set_window(conn, "postgres", HEARTBEATS, timedelta(hours=36), Settings().partition_lookahead)
        await run_cleanup(conn, "postgres", [HEARTBEATS])
    finally:
        await conn.close()
    now = datetime.now(UTC).replace(microsecond=0)
    writer = make_writer(pool, batch_window=timedelta(milliseconds=200), flushers=1, retry_base_delay=1.0)
    await writer.start()
    try:
        started = asyncio.get_running_loop().time()
        old, *fresh = await asyncio.gather(
            writer.submit([heartbeat("gone-old", now - timedelta(hours=47))], request_id="old-1"),
            *(writer.submit([heartbeat(f"gone-{i}", now - timedelta(seconds=5))]) for i in range(20)),
            return_exceptions=True,
        )
        elapsed = asyncio.get_running_loop().time() - started
    finally:
        await writer.stop()
    assert fresh == [[True]] * 20
    assert isinstance(old, WriteFailed) and not old.transient and old.request_id == "old-1", old
    assert elapsed < 1.0  # no backoff: not taken for an unavailable database
    assert await stored_count(db_url, "device_heartbeats") == 20
    ensured = [r for r in caplog.records if "creating partitions" in r.getMessage()]
    assert len(ensured) == 1  # once per batch, not once per bisected half
