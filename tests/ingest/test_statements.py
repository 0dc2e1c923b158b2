"""The database enforces idempotency: one dispatch per request_id, one heartbeat per bucket."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import asyncpg

from service.app import ROW_STAGES, row_merges
from service.commands.dispatches import DispatchOutcome, DispatchRow, merge_dispatches
from service.ingest.connection import prepare_connection
from service.ingest.heartbeats import HeartbeatRow, merge_heartbeats
from service.ingest.writer import GroupCommitWriter
from service.metrics import Metrics
from tests.support.fleet import add_devices


async def test_same_request_id_from_separate_writers_at_once_gives_one_row(pool: asyncpg.Pool) -> None:
    # Eight writers, so eight flushes on their own connections race for one key (the writer
    # retries a deadlock victim, as when concurrent inserts create a TimescaleDB chunk).
    writers = [GroupCommitWriter(pool, Metrics(), row_merges(), flushers=1) for _ in range(8)]
    for writer in writers:
        await writer.start()
    try:

        async def dispatch(writer: GroupCommitWriter, i: int) -> DispatchOutcome:
            row = DispatchRow("req-1", f"dev-{i}", "ping", {"n": i}, datetime.now(UTC), None)
            (outcome,) = await writer.submit([row])
            return outcome

        results = await asyncio.gather(*(dispatch(w, i) for i, w in enumerate(writers)))
    finally:
        for writer in writers:
            await writer.stop()
    created = [r.dispatch for r in results if r.created]
    existing = [r.dispatch for r in results if not r.created]
    assert len(created) == 1
    assert len(existing) == 7
    assert {r.id for r in existing} == {created[0].id}
    assert all(r.device_id == created[0].device_id for r in existing)
    count = await pool.fetchval("SELECT count(*) FROM fcm_dispatches WHERE request_id = 'req-1'")
    assert count == 1


async def test_a_second_dispatch_row_for_a_request_id_is_refused_by_the_database(
    conn: asyncpg.Connection,
) -> None:
    await prepare_connection(conn, ROW_STAGES)
    now = datetime.now(UTC)
    async with conn.transaction():
        await merge_dispatches(conn, [DispatchRow("req-2", "dev", "ping", None, now, None)])
    dispatch_id = await conn.fetchval("SELECT id FROM fcm_dispatches WHERE request_id = 'req-2'")
    # Bypassing the writer: another row with the same key but a new id or time breaks the FK/PK.
    for new_id, sent_at in ((dispatch_id + 1000, now), (dispatch_id, now + timedelta(seconds=1))):
        try:
            await conn.execute(
                "INSERT INTO fcm_dispatches (id, sent_at, request_id, device_id, action)"
                " VALUES ($1, $2, 'req-2', 'dev', 'ping')",
                new_id,
                sent_at,
            )
        except (asyncpg.ForeignKeyViolationError, asyncpg.UniqueViolationError):
            pass
        else:
            raise AssertionError("a duplicate dispatch row was accepted")
    assert await conn.fetchval("SELECT count(*) FROM fcm_dispatches WHERE request_id = 'req-2'") == 1


async def _heartbeats(conn: asyncpg.Connection, times: list[datetime]) -> list[bool]:
    rows = [HeartbeatRow("dev-hb", t, "ok", 50, None, None, None) for t in times]
    async with conn.transaction():
        return await merge_heartbeats(conn, rows, bucket_seconds=10)


async def test_heartbeats_3s_apart_in_one_bucket_store_one_row(conn: asyncpg.Connection) -> None:
    await prepare_connection(conn, ROW_STAGES)
    base = datetime(2026, 1, 1, tzinfo=UTC).replace(
        year=datetime.now(UTC).year, month=datetime.now(UTC).month, day=datetime.now(UTC).day
    )
    first = await _heartbeats(conn, [base + timedelta(seconds=1)])
    second = await _heartbeats(conn, [base + timedelta(seconds=4)])
    assert first == [True] and second == [False]
    assert await conn.fetchval("SELECT count(*) FROM device_heartbeats WHERE device_id = 'dev-hb'") == 1


async def test_heartbeats_11s_apart_store_two_rows(conn: asyncpg.Connection) -> None:
    await prepare_connection(conn, ROW_STAGES)
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    assert await _heartbeats(conn, [base]) == [True]
    assert await _heartbeats(conn, [base + timedelta(seconds=11)]) == [True]
    assert await conn.fetchval("SELECT count(*) FROM device_heartbeats WHERE device_id = 'dev-hb'") == 2


async def test_one_flush_keeps_the_first_heartbeat_of_each_bucket(conn: asyncpg.Connection) -> None:
    await prepare_connection(conn, ROW_STAGES)
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    base -= timedelta(seconds=base.second % 10)
    stored = await _heartbeats(conn, [base, base + timedelta(seconds=3), base + timedelta(seconds=12)])
    assert stored == [True, False, True]
    ts = [r[0] for r in await conn.fetch("SELECT ts FROM device_heartbeats ORDER BY ts")]
    assert ts == [base, base + timedelta(seconds=12)]


async def test_through_the_writer_a_dispatch_is_created_once_and_a_heartbeat_moves_presence(
    pool: asyncpg.Pool,
) -> None:
    async with pool.acquire() as conn:
        await add_devices(conn, ["d"])
    writer = GroupCommitWriter(pool, Metrics(), row_merges(), batch_window=timedelta(milliseconds=2))
    await writer.start()
    try:
        row = DispatchRow("lib-1", "d", "ping", None, datetime.now(UTC), None)
        (first,) = await writer.submit([row])
        (again,) = await writer.submit([row._replace(sent_at=datetime.now(UTC))])
        base = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=2)
        base -= timedelta(seconds=base.second % 10)
        beat = HeartbeatRow("d", base, "ok", 85, None, None, {"locale": "de"})
        stored = await writer.submit([beat, beat._replace(ts=base + timedelta(seconds=3))])
    finally:
        await writer.stop()
    assert first.created and not again.created
    assert again.dispatch == first.dispatch
    assert stored == [True, False]
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT extra->>'locale' FROM device_heartbeats") == "de"
        # Stored with its presence, in the same transaction: never a heartbeat without it.
        seen = await conn.fetchrow(
            "SELECT last_ts, last_battery_pct FROM device_presence WHERE device_id = 'd'"
        )
        assert (seen["last_ts"], seen["last_battery_pct"]) == (base + timedelta(seconds=3), 85)
