"""The event log: every event type is written in the transaction of its cause (a rolled-back
cause leaves no event), once per change, and its payload fits the catalogue's struct."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from service.app import row_merges
from service.commands.acks import AckRow, merge_acks
from service.commands.dispatches import DispatchRow
from service.commands.expiry import expire_commands
from service.events import catalogue
from service.events import retention as retention_events
from service.fleet import presence
from service.ingest.connection import set_json_codecs
from service.ingest.heartbeats import HeartbeatRow, merge_heartbeats
from service.ingest.writer import GroupCommitWriter
from service.metrics import Metrics
from service.rollout.verification import run as verification_step
from service.settings import PresencePolicy
from tests.support.app import Api
from tests.support.fleet import add_devices

T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
POLICY = PresencePolicy()


async def events_of(conn: asyncpg.Connection, device_id: str = "") -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT type, version, occurred_at, payload FROM events WHERE device_id = $1 ORDER BY id", device_id
    )


def assert_in_catalogue(rows: list[asyncpg.Record]) -> None:
    for r in rows:
        catalogue.decode_payload(r["type"], r["version"], r["payload"])


def beat(device: str, ts: datetime, version: str | None = "1.0") -> HeartbeatRow:
    return HeartbeatRow(device, ts, "ok", 50, version, "wifi", None)


async def flush(conn: asyncpg.Connection, rows: list[HeartbeatRow], now: datetime) -> None:
    await merge_heartbeats(conn, rows, 10)
    await presence.update_presence(conn, rows, 10, POLICY, now)


async def test_the_heartbeat_flush_writes_came_online_and_version_changes_or_with_its_rollback_nothing(
    pool: asyncpg.Pool,
) -> None:
    async with pool.acquire() as conn:
        await add_devices(conn, ["hb-1", "hb-2"])
        async with conn.transaction():
            await flush(conn, [beat("hb-1", T0), beat("hb-2", T0)], T0)
        assert await events_of(conn, "hb-1") == []  # a first heartbeat is not a transition
        later = T0 + timedelta(hours=1)  # past the deadline, with a new version
        rows = [beat("hb-1", later, "2.0"), beat("hb-2", later)]
        with pytest.raises(RuntimeError):
            async with conn.transaction():
                await flush(conn, rows, later)
                assert len(await events_of(conn, "hb-1")) == 3  # written by the flush statement
                raise RuntimeError("the flush fails after its statements")
        assert await events_of(conn, "hb-1") == [] and await events_of(conn, "hb-2") == []
        async with conn.transaction():
            await flush(conn, rows, later)
        hb1 = await events_of(conn, "hb-1")
        # The missing went_offline first (at the deadline), then came_online, then the version.
        assert [r["type"] for r in hb1] == [
            "device.went_offline",
            "device.came_online",
            "device.app_version_changed",
        ]
        assert hb1[2]["payload"] == {"from": "1.0", "to": "2.0"}
        assert [r["type"] for r in await events_of(conn, "hb-2")] == [
            "device.went_offline",
            "device.came_online",
        ]
        assert_in_catalogue(hb1)


async def test_went_offline_is_written_with_the_presence_mark_once(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await add_devices(conn, ["off-1"])
        async with conn.transaction():
            await flush(conn, [beat("off-1", T0)], T0)
        deadline = await conn.fetchval("SELECT offline_after FROM device_presence WHERE device_id = 'off-1'")
        with pytest.raises(RuntimeError):
            async with conn.transaction():
                assert await presence.record_went_offline(conn, T0 + timedelta(hours=1)) == (1, True)
                raise RuntimeError
        assert await events_of(conn, "off-1") == []
        assert (
            await conn.fetchval("SELECT offline_since FROM device_presence WHERE device_id = 'off-1'") is None
        )
        assert await presence.record_went_offline(conn, T0 + timedelta(hours=1)) == (1, True)
        assert await presence.record_went_offline(conn, T0 + timedelta(hours=2)) == (0, True)
        rows = await events_of(conn, "off-1")
        assert [(r["type"], r["occurred_at"]) for r in rows] == [("device.went_offline", deadline)]
        assert_in_catalogue(rows)


async def test_acks_write_one_command_event_per_move_and_expiry_writes_expired(pool: asyncpg.Pool) -> None:
    writer = GroupCommitWriter(
        pool, Metrics(), row_merges(), batch_window=timedelta(milliseconds=2), flushers=1
    )
    await writer.start()
    try:
        await writer.submit([DispatchRow(r, "cmd-1", "lock", None, T0, None) for r in ("a", "b", "c", "d")])
        await writer.submit([AckRow("a", "cmd-1", "delivered", None, None, None)])
        await writer.submit([AckRow("a", "cmd-1", "executed", None, {"locked": True}, None)])
        await writer.submit([AckRow("a", "cmd-1", "executed", None, {"locked": True}, None)])  # repeat
        await writer.submit([AckRow("b", "cmd-1", "failed", None, None, "no screen")])
        await writer.submit([AckRow("c", "cmd-1", "delivered", None, None, None)])
    finally:
        await writer.stop()
    async with pool.acquire() as conn:
        # A rolled-back ack merge leaves no event.
        with pytest.raises(RuntimeError):
            async with conn.transaction():
                await merge_acks(conn, [AckRow("d", "cmd-1", "executed", None, None, None)])
                raise RuntimeError
        expired = await expire_commands(conn, timedelta(minutes=5))
        assert expired.expired == 2  # c (delivered) and d (pending)
        assert (await expire_commands(conn, timedelta(minutes=5))).expired == 0
        rows = await events_of(conn, "cmd-1")
    moves = [(r["type"], r["payload"]["request_id"], r["payload"]["previous"]) for r in rows]
    assert moves[:4] == [
        ("command.delivered", "a", "pending"),
        ("command.executed", "a", "delivered"),
        ("command.failed", "b", "pending"),
        ("command.delivered", "c", "pending"),
    ]
    assert sorted(moves[4:]) == [("command.expired", "c", "delivered"), ("command.expired", "d", "pending")]
    assert rows[1]["payload"]["result"] == {"locked": True}
    assert rows[2]["payload"]["error"] == "no screen"
    assert_in_catalogue(rows)


async def test_enrollment_revocation_and_reinstatement_write_their_events_once_per_change(api: Api) -> None:
    await api.enroll("life-1")
    for _ in range(2):  # the second revoke and reinstate change nothing: no event
        assert (await api.client.post("/v1/devices/life-1/revoke", headers=api.op())).status == 200
    for _ in range(2):
        assert (await api.client.post("/v1/devices/life-1/reinstate", headers=api.op())).status == 200
    await api.enroll("life-1", bound=True)
    conn = await asyncpg.connect(api.db_url)
    try:
        await set_json_codecs(conn)
        rows = await events_of(conn, "life-1")
    finally:
        await conn.close()
    assert [r["type"] for r in rows] == [
        "device.enrolled",
        "device.revoked",
        "device.reinstated",
        "device.re_enrolled",
    ]
    assert rows[1]["payload"] == {"by": "alice"}
    assert_in_catalogue(rows)


async def _register(api: Api, build_id: str, version_name: str) -> None:
    body: dict[str, Any] = {
        "package_name": "com.example.agent",
        "version_code": abs(hash(build_id)) % 100_000,
        "version_name": version_name,
        "build_id": build_id,
        "sha256": "a" * 64,
        "size_bytes": 1,
    }
    r = await api.client.post("/v1/apk-versions", json=body, headers=api.op())
    assert r.status == 201, await r.text()


async def test_a_failed_install_and_a_verified_one_write_their_events(api: Api) -> None:
    token = await api.enroll("inst-1")
    device = {"Authorization": f"Bearer {token}"}
    await _register(api, "ci-1", "1.1.0")
    await _register(api, "ci-2", "1.2.0")
    for status in ("installing", "failed", "failed"):  # the repeated failure changes nothing
        r = await api.client.post(
            "/v1/apk-installations",
            json={"build_id": "ci-1", "status": status, "error": "disk"},
            headers=device,
        )
        assert r.status in (200, 201), await r.text()
    r = await api.client.post(
        "/v1/apk-installations", json={"build_id": "ci-2", "status": "installed"}, headers=device
    )
    assert r.status == 201
    r = await api.client.post(
        "/v1/heartbeats", json={"status": "ok", "battery_pct": 5, "app_version": "1.2.0"}, headers=device
    )
    assert r.status == 200, await r.text()
    conn = await asyncpg.connect(api.db_url)
    try:
        await set_json_codecs(conn)
        # The app's own maintenance round may verify it first: either way, once.
        verified = [(await verification_step(conn, timedelta(hours=1))).installs_verified for _ in range(2)]
        assert verified in ([1, 0], [0, 0])
        rows = [r for r in await events_of(conn, "inst-1") if r["type"].startswith("install.")]
    finally:
        await conn.close()
    assert [(r["type"], r["payload"]["build_id"]) for r in rows] == [
        ("install.failed", "ci-1"),
        ("install.verified", "ci-2"),
    ]
    assert rows[0]["payload"] == {"build_id": "ci-1", "version_name": "1.1.0", "error": "disk"}
    assert_in_catalogue(rows)


async def test_retention_problems_are_events_only_on_a_change_of_state(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        written = [
            await retention_events.record_change(conn, problems)
            for problems in ([], ["a"], ["a", "b"], [], [], ["c"])
        ]
        rows = await events_of(conn)
    assert written == [
        None,
        "retention.problem_raised",
        None,
        "retention.problem_cleared",
        None,
        "retention.problem_raised",
    ]
    assert [r["payload"]["problems"] for r in rows] == [["a"], ["a"], ["c"]]
    assert_in_catalogue(rows)


async def test_the_feed_horizon_hides_an_event_until_every_older_transaction_ended(
    pool: asyncpg.Pool,
) -> None:
    from service.events import feed

    async with pool.acquire() as early, pool.acquire() as late, pool.acquire() as reader:
        # The chunk for now exists already (TimescaleDB: a transaction creating a chunk holds
        # other inserters into it until it ends, which this test is not about).
        await reader.execute("INSERT INTO events (device_id, type) VALUES ('h-0', 'device.reinstated')")
        start = await feed.head(reader)
        tx_early = early.transaction()
        await tx_early.start()
        # The early transaction draws the lower id ...
        await early.execute("INSERT INTO events (device_id, type) VALUES ('h-1', 'device.reinstated')")
        # ... but the late one commits first.
        async with late.transaction():
            await late.execute("INSERT INTO events (device_id, type) VALUES ('h-2', 'device.reinstated')")
        hidden = await feed.read_page(reader, start, 10)
        assert hidden.events == []  # h-2 waits for h-1's transaction to end
        await tx_early.commit()
        # Both now, in one page or, if some other transaction (a TimescaleDB job, say) holds
        # the horizon a moment longer, in the pages that follow: each once.
        got: list[str] = []
        cursor = hidden.next_cursor
        async with asyncio.timeout(10):
            while len(got) < 2:
                page = await feed.read_page(reader, cursor, 10)
                got += [e.device_id for e in page.events if e.device_id]
                cursor = page.next_cursor
                await asyncio.sleep(0.05)
        assert sorted(got) == ["h-1", "h-2"]
        again = await feed.read_page(reader, cursor, 10)
        assert again.events == []
