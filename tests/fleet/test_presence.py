"""Presence kept by the writer and transitions recorded by maintenance, on a real database, with
the clock injected (nobody sleeps): the learned interval, the exact deadline, came_online with
its gap, forward-only presence, one went_offline per transition across instances."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from service.app import row_merges
from service.fleet import presence
from service.fleet.devices import device_row
from service.ingest.heartbeats import HeartbeatRow
from service.ingest.writer import GroupCommitWriter
from service.metrics import Metrics
from service.retention.maintenance import Maintenance
from service.settings import PresencePolicy, Settings, StorageMode
from tests.support.fleet import Clock, add_devices

T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=6)
US = timedelta(microseconds=1)


def beat(
    device: str, ts: datetime, *, status: str = "ok", battery: int = 50, version: str | None = None
) -> HeartbeatRow:
    return HeartbeatRow(device, ts, status, battery, version, "wifi", None)


async def writer_for(pool: asyncpg.Pool, clock: Clock, **kwargs: object) -> GroupCommitWriter:
    policy = kwargs.pop("presence", None)
    w = GroupCommitWriter(
        pool,
        Metrics(),
        row_merges(presence_policy=policy, presence_clock=clock),  # type: ignore[arg-type]
        batch_window=timedelta(milliseconds=2),
        **kwargs,  # type: ignore[arg-type]
    )
    await w.start()
    return w


async def presence_of(conn: asyncpg.Connection, device: str) -> asyncpg.Record:
    return await conn.fetchrow("SELECT * FROM device_presence WHERE device_id = $1", device)


async def events_of(conn: asyncpg.Connection, device: str) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        "SELECT split_part(type, '.', 2) AS event_type, occurred_at AS created_at, payload::text AS details"
        " FROM events WHERE device_id = $1 AND type LIKE 'device.%' ORDER BY id",
        device,
    )
    return [{**r, "details": json.loads(r["details"])} for r in rows]


async def test_the_interval_is_learned_from_the_devices_own_gaps_after_three_of_them(
    pool: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    await add_devices(conn, ["every-30s", "jittery"])
    clock = Clock(T0)
    writer = await writer_for(pool, clock)
    try:
        expected = []
        for i in range(8):
            clock.now = T0 + timedelta(seconds=30 * i)
            await writer.submit([beat("every-30s", clock.now)])
            expected.append((await presence_of(conn, "every-30s"))["expected_interval_seconds"])
        # The default until three gaps were seen, then the device's own 30 s.
        assert expected[:3] == [60.0, 60.0, 60.0]
        assert expected[3:] == [30.0] * 5
        row = await presence_of(conn, "every-30s")
        assert row["gaps_seen"] == 7
        # 3 missed beats of 30 s is 90 s, under the 120 s floor.
        assert row["offline_after"] == row["last_seen_at"] + timedelta(seconds=120)

        # A device beating every ~5 min with jitter: the learned interval lands near its mean.
        gaps = [290, 310, 300, 305, 295, 300, 298, 302, 300, 300, 300, 300, 300, 300]
        ts = T0
        for gap in gaps:
            ts += timedelta(seconds=gap)
            clock.now = ts
            await writer.submit([beat("jittery", ts)])
        row = await presence_of(conn, "jittery")
        assert 295 <= row["expected_interval_seconds"] <= 305
        assert row["offline_after"] - row["last_seen_at"] == timedelta(
            seconds=3 * row["expected_interval_seconds"]
        )
    finally:
        await writer.stop()


async def test_a_backlog_in_one_request_teaches_every_gap_it_holds(
    pool: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    await add_devices(conn, ["backlog"])
    clock = Clock(T0 + timedelta(hours=1))
    writer = await writer_for(pool, clock)
    try:
        await writer.submit([beat("backlog", T0 + timedelta(seconds=20 * i)) for i in range(6)])
    finally:
        await writer.stop()
    row = await presence_of(conn, "backlog")
    assert (row["gaps_seen"], row["learned_interval_seconds"], row["expected_interval_seconds"]) == (
        5,
        20.0,
        20.0,
    )
    assert row["last_ts"] == T0 + timedelta(seconds=100)
    # Seen when received (the server's clock), not at the device's old timestamps.
    assert row["last_seen_at"] == clock.now


async def test_online_until_the_exact_deadline_then_offline_with_one_went_offline_event(
    pool: asyncpg.Pool, conn: asyncpg.Connection, mode: StorageMode
) -> None:
    await add_devices(conn, ["dev-a"])
    clock = Clock(T0)
    writer = await writer_for(pool, clock)
    try:
        await writer.submit([beat("dev-a", T0)])
    finally:
        await writer.stop()
    deadline = T0 + timedelta(seconds=180)  # 3 x the 60 s default
    assert (await presence_of(conn, "dev-a"))["offline_after"] == deadline

    metrics = Metrics()
    maintenance = Maintenance(pool, Settings(storage_mode=mode), mode, metrics, clock=clock)
    clock.now = deadline - US
    report = await maintenance.run_once()
    assert report.presence is not None and report.presence.went_offline == 0
    assert (await device_row(conn, "dev-a", clock.now))["presence"] == "online"
    assert metrics.devices.labels("online")._value.get() == 1

    clock.now = deadline
    assert (await device_row(conn, "dev-a", deadline))["presence"] == "offline"  # before any pass
    report = await maintenance.run_once()
    assert report.presence is not None and report.presence.went_offline == 1
    assert report.errors == ()
    row = await device_row(conn, "dev-a", deadline)
    assert (row["presence"], row["offline_since"]) == ("offline", deadline)
    assert [(e["event_type"], e["created_at"]) for e in await events_of(conn, "dev-a")] == [
        ("went_offline", deadline)
    ]
    assert metrics.devices.labels("offline")._value.get() == 1
    assert metrics.devices.labels("online")._value.get() == 0

    clock.now = deadline + timedelta(hours=1)
    assert (await maintenance.run_once()).presence.went_offline == 0  # type: ignore[union-attr]
    assert len(await events_of(conn, "dev-a")) == 1


async def test_a_heartbeat_after_the_deadline_records_came_online_with_the_gap(
    pool: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    await add_devices(conn, ["recorded", "unrecorded"])
    clock = Clock(T0)
    writer = await writer_for(pool, clock)
    try:
        await writer.submit([beat("recorded", T0), beat("unrecorded", T0)])
        deadline = T0 + timedelta(seconds=180)
        # "recorded" went offline through the maintenance pass; "unrecorded" before any pass ran.
        assert await presence.record_went_offline(conn, deadline) == (2, True)
        await conn.execute(
            "DELETE FROM events WHERE device_id = 'unrecorded' AND type = 'device.went_offline';"
            " UPDATE device_presence SET offline_since = NULL WHERE device_id = 'unrecorded'"
        )
        clock.now = T0 + timedelta(minutes=47)
        await writer.submit([beat("recorded", clock.now), beat("unrecorded", clock.now)])
    finally:
        await writer.stop()
    for device in ("recorded", "unrecorded"):
        events = await events_of(conn, device)
        # The writer records a missing went_offline itself, at the deadline, before came_online.
        assert [(e["event_type"], e["created_at"]) for e in events] == [
            ("went_offline", deadline),
            ("came_online", clock.now),
        ], device
        details = events[1]["details"]
        assert details["gap_seconds"] == 47 * 60
        assert datetime.fromisoformat(details["offline_since"]) == deadline
        row = await device_row(conn, device, clock.now)
        assert (row["presence"], row["offline_since"]) == ("online", None)
        assert row["offline_after"] == clock.now + timedelta(seconds=180)


async def test_a_late_heartbeat_never_moves_presence_back(
    pool: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    await add_devices(conn, ["late"])
    clock = Clock(T0)
    writer = await writer_for(pool, clock)
    try:
        await writer.submit([beat("late", T0, status="charging", battery=90, version="2.0")])
        before = await presence_of(conn, "late")
        # A back-filled heartbeat (older device time), received later: history, not presence.
        clock.now = T0 + timedelta(seconds=20)
        stored = await writer.submit(
            [beat("late", T0 - timedelta(minutes=30), status="idle", battery=10, version="1.0")]
        )
        assert stored == [True]
        after = await presence_of(conn, "late")
        assert (
            after["last_ts"],
            after["last_status"],
            after["last_battery_pct"],
            after["last_app_version"],
        ) == (
            T0,
            "charging",
            90,
            "2.0",
        )
        assert (after["gaps_seen"], after["learned_interval_seconds"]) == (0, None)
        # Yet the device was heard from: its last sight and deadline move forward.
        assert after["last_seen_at"] == clock.now
        # A flush judged at an earlier instant (a slower concurrent flusher) moves nothing back.
        clock.now = T0 + timedelta(seconds=5)
        await writer.submit([beat("late", T0 + timedelta(seconds=1))])
        last = await presence_of(conn, "late")
        assert last["last_seen_at"] == T0 + timedelta(seconds=20)
        assert last["offline_after"] == after["offline_after"]
        assert before["offline_after"] < after["offline_after"]
    finally:
        await writer.stop()
    assert [e["event_type"] for e in await events_of(conn, "late")] == []


async def test_a_new_app_version_is_recorded_from_and_to(
    pool: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    await add_devices(conn, ["upgrader"])
    clock = Clock(T0)
    writer = await writer_for(pool, clock)
    try:
        await writer.submit([beat("upgrader", T0, version="1.4.0")])
        clock.now = T0 + timedelta(seconds=30)
        await writer.submit([beat("upgrader", clock.now, version="1.5.0")])
        await writer.submit([beat("upgrader", clock.now + timedelta(seconds=1), version="1.5.0")])
    finally:
        await writer.stop()
    events = await events_of(conn, "upgrader")
    assert [(e["event_type"], e["details"]) for e in events] == [
        ("app_version_changed", {"from": "1.4.0", "to": "1.5.0"})
    ]


async def test_heartbeats_of_devices_without_presence_are_stored_and_nothing_else(
    pool: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    clock = Clock(T0)
    writer = await writer_for(pool, clock)
    try:
        assert await writer.submit([beat("not-enrolled", T0)]) == [True]
    finally:
        await writer.stop()
    assert await conn.fetchval("SELECT count(*) FROM device_presence") == 0


async def test_two_instances_record_one_went_offline_per_transition(
    db_url: str, pool: asyncpg.Pool, conn: asyncpg.Connection, mode: StorageMode
) -> None:
    ids = [f"fleet-{i:04d}" for i in range(500)]
    await add_devices(conn, ids)
    # Deadlines spread over ten minutes, none recorded.
    await conn.execute(
        "UPDATE device_presence SET last_seen_at = $1::timestamptz - interval '3 minutes'"
        " + (substr(device_id, 7)::int % 600) * interval '1 second',"
        " offline_after = $1::timestamptz + (substr(device_id, 7)::int % 600) * interval '1 second',"
        " expected_interval_seconds = 60",
        T0,
    )
    other = await asyncpg.create_pool(db_url, min_size=1, max_size=2)
    try:
        clock = Clock(T0)
        settings = Settings(storage_mode=mode)
        instances = [Maintenance(p, settings, mode, clock=clock) for p in (pool, other)]
        for minute in range(12):
            clock.now = T0 + timedelta(minutes=minute)
            await asyncio.gather(*(m.run_once() for m in instances))
            # Also without the maintenance lock, two passes at once record each once.
            async with pool.acquire() as a, other.acquire() as b:
                await asyncio.gather(
                    presence.record_went_offline(a, clock.now, batch_size=50),
                    presence.record_went_offline(b, clock.now, batch_size=50),
                )
    finally:
        await other.close()
    rows = await conn.fetch(
        "SELECT e.device_id, count(*) AS n, min(e.occurred_at) = min(p.offline_since) AS exact"
        " FROM events e JOIN device_presence p USING (device_id)"
        " WHERE e.type = 'device.went_offline' GROUP BY e.device_id"
    )
    assert len(rows) == 500
    assert all(r["n"] == 1 and r["exact"] for r in rows)


@pytest.mark.parametrize("policy", [PresencePolicy(missed_beats=5, min_offline=timedelta(seconds=600))])
async def test_the_floor_and_the_missed_beats_come_from_the_policy(
    pool: asyncpg.Pool, conn: asyncpg.Connection, policy: PresencePolicy
) -> None:
    await add_devices(conn, ["floored"])
    clock = Clock(T0)
    writer = await writer_for(pool, clock, presence=policy)
    try:
        await writer.submit([beat("floored", T0)])
        assert (await presence_of(conn, "floored"))["offline_after"] == T0 + timedelta(seconds=600)
        for i in range(1, 5):
            clock.now = T0 + timedelta(seconds=200 * i)
            await writer.submit([beat("floored", clock.now)])
    finally:
        await writer.stop()
    assert (await presence_of(conn, "floored"))["offline_after"] == clock.now + timedelta(seconds=1000)


async def test_a_flush_begun_before_a_recorded_deadline_still_pairs_it_with_came_online(
    pool: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    await add_devices(conn, ["racer"])
    clock = Clock(T0)
    writer = await writer_for(pool, clock)
    try:
        await writer.submit([beat("racer", T0)])
        deadline = T0 + timedelta(seconds=180)
        # The pass (its clock just past the deadline) records went_offline while a flush whose
        # transaction began a moment before the deadline is still running.
        assert await presence.record_went_offline(conn, deadline + US) == (1, True)
        clock.now = deadline - US
        await writer.submit([beat("racer", clock.now)])
    finally:
        await writer.stop()
    events = await events_of(conn, "racer")
    assert [(e["event_type"], e["created_at"]) for e in events] == [
        ("went_offline", deadline),
        ("came_online", deadline),
    ]
    assert (await device_row(conn, "racer", deadline))["presence"] == "online"
