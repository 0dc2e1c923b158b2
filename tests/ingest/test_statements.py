"""The database enforces idempotency: one dispatch per request_id, one heartbeat per bucket."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import asyncpg

from service.ingest import statements
from service.ingest.recording import record_fcm_dispatch, record_heartbeat_with_bucketing
from service.ingest.rows import DispatchOutcome, DispatchRow, HeartbeatRow


async def _connect(url: str) -> asyncpg.Connection:
    conn = await asyncpg.connect(url)
    await statements.prepare_connection(conn)
    return conn


async def test_same_request_id_from_separate_connections_at_once_gives_one_row(db_url: str) -> None:
    conns = [await _connect(db_url) for _ in range(8)]
    try:

        async def dispatch(conn: asyncpg.Connection, i: int) -> DispatchOutcome:
            return await record_fcm_dispatch(
                conn, request_id="req-1", device_id=f"dev-{i}", action="ping", payload={"n": i}
            )

        results = await asyncio.gather(*(dispatch(c, i) for i, c in enumerate(conns)))
        created = [r.dispatch for r in results if r.created]
        existing = [r.dispatch for r in results if not r.created]
        assert len(created) == 1
        assert len(existing) == 7
        assert {r.id for r in existing} == {created[0].id}
        assert all(r.device_id == created[0].device_id for r in existing)
        count = await conns[0].fetchval("SELECT count(*) FROM fcm_dispatches WHERE request_id = 'req-1'")
        assert count == 1
    finally:
        for c in conns:
            await c.close()


async def test_a_second_dispatch_row_for_a_request_id_is_refused_by_the_database(
    conn: asyncpg.Connection,
) -> None:
    await statements.prepare_connection(conn)
    now = datetime.now(UTC)
    async with conn.transaction():
        await statements.merge_dispatches(conn, [DispatchRow("req-2", "dev", "ping", None, now, None)])
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
        return await statements.merge_heartbeats(conn, rows, bucket_seconds=10)


async def test_heartbeats_3s_apart_in_one_bucket_store_one_row(conn: asyncpg.Connection) -> None:
    await statements.prepare_connection(conn)
    base = datetime(2026, 1, 1, tzinfo=UTC).replace(
        year=datetime.now(UTC).year, month=datetime.now(UTC).month, day=datetime.now(UTC).day
    )
    first = await _heartbeats(conn, [base + timedelta(seconds=1)])
    second = await _heartbeats(conn, [base + timedelta(seconds=4)])
    assert first == [True] and second == [False]
    assert await conn.fetchval("SELECT count(*) FROM device_heartbeats WHERE device_id = 'dev-hb'") == 1


async def test_heartbeats_11s_apart_store_two_rows(conn: asyncpg.Connection) -> None:
    await statements.prepare_connection(conn)
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    assert await _heartbeats(conn, [base]) == [True]
    assert await _heartbeats(conn, [base + timedelta(seconds=11)]) == [True]
    assert await conn.fetchval("SELECT count(*) FROM device_heartbeats WHERE device_id = 'dev-hb'") == 2


async def test_one_flush_keeps_the_first_heartbeat_of_each_bucket(conn: asyncpg.Connection) -> None:
    await statements.prepare_connection(conn)
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    base -= timedelta(seconds=base.second % 10)
    stored = await _heartbeats(conn, [base, base + timedelta(seconds=3), base + timedelta(seconds=12)])
    assert stored == [True, False, True]
    ts = [r[0] for r in await conn.fetch("SELECT ts FROM device_heartbeats ORDER BY ts")]
    assert ts == [base, base + timedelta(seconds=12)]


async def test_library_api_has_the_guides_semantics(conn: asyncpg.Connection) -> None:
    first = await record_fcm_dispatch(conn, request_id="lib-1", device_id="d", action="ping")
    again = await record_fcm_dispatch(conn, request_id="lib-1", device_id="d", action="ping")
    assert first.created and not again.created
    assert again.dispatch == first.dispatch
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=2)
    base -= timedelta(seconds=base.second % 10)
    data = {"status": "ok", "battery_pct": 85, "locale": "de"}
    assert await record_heartbeat_with_bucketing(conn, device_id="d", heartbeat_data=data, ts=base)
    assert not await record_heartbeat_with_bucketing(
        conn, device_id="d", heartbeat_data=data, ts=base + timedelta(seconds=3)
    )
    assert await conn.fetchval("SELECT extra->>'locale' FROM device_heartbeats") == "de"
