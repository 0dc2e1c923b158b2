"""Overload over HTTP: a full queue or a stalled database answers 503 + Retry-After at once,
memory stays bounded, nothing is acknowledged without a commit, and it recovers by itself.

The database is "stalled" by holding an ACCESS EXCLUSIVE lock on `device_heartbeats` from a
separate connection: the writer's INSERT waits on it exactly as on a stopped server."""

from __future__ import annotations

import asyncio
import gc
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import psutil
import pytest

from service.api.state import SERVICES
from service.settings import Settings
from tests.support.app import Api, HeartbeatsLock


@pytest.fixture
def app_settings(app_settings: Settings) -> Settings:
    # A tiny queue and batch so that a few requests fill it; a stall threshold well above one
    # normal flush and well below the pool's 10 s command timeout.
    return replace(
        app_settings,
        queue_max_rows=40,
        batch_max_rows=10,
        stall_after=timedelta(seconds=1),
        ack_timeout=timedelta(seconds=8),
    )


def dev(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def batch(n: int, start: datetime) -> dict[str, Any]:
    """`n` heartbeats in `n` different buckets (stored, not absorbed)."""
    return {
        "heartbeats": [
            {"ts": (start + timedelta(seconds=10 * i)).isoformat(), "status": "ok", "battery_pct": 50}
            for i in range(n)
        ]
    }


async def wait_until(predicate: Any, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def fill_queue(
    api: Api, heartbeats_lock: HeartbeatsLock, token: str, start: datetime
) -> list[asyncio.Task[Any]]:
    """Lock the table, then send 6 requests of 10 heartbeats: the 2 flushers take a batch of 10
    each and block on the lock, and the other 4 requests fill the 40-row queue."""
    await heartbeats_lock.hold()
    pending = [
        asyncio.create_task(
            api.client.post(
                "/v1/heartbeats", json=batch(10, start + timedelta(minutes=5 * i)), headers=dev(token)
            )
        )
        for i in range(6)
    ]
    await wait_until(lambda: api.app[SERVICES].writer.queued_rows == 40)
    return pending


async def test_full_queue_answers_503_with_retry_after_within_100ms_and_recovers(
    api: Api, heartbeats_lock: HeartbeatsLock
) -> None:
    token = await api.enroll("busy-1")
    writer = api.app[SERVICES].writer
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    writer.watchdog.stall_after = 60  # only the queue limit may refuse here
    pending = await fill_queue(api, heartbeats_lock, token, start)

    latencies = []
    for _ in range(20):
        t0 = time.perf_counter()
        r = await api.client.post("/v1/heartbeats", json=batch(1, start), headers=dev(token))
        latencies.append(time.perf_counter() - t0)
        assert r.status == 503
        assert r.headers["Retry-After"] == "1"
        assert (await r.json())["error"]["code"] == "queue_full"
    assert max(latencies) < 0.1, latencies
    assert writer.queued_rows == 40

    await heartbeats_lock.release()
    responses = await asyncio.gather(*pending)
    assert [r.status for r in responses] == [200] * 6
    assert await api.count("SELECT count(*) FROM device_heartbeats WHERE device_id = 'busy-1'") == 60
    # It recovered by itself: new writes are accepted again.
    r = await api.client.post(
        "/v1/heartbeats", json=batch(1, start - timedelta(minutes=5)), headers=dev(token)
    )
    assert r.status == 200


async def test_refused_bodies_are_not_read_so_memory_stays_bounded(
    api: Api, heartbeats_lock: HeartbeatsLock
) -> None:
    token = await api.enroll("busy-2")
    writer = api.app[SERVICES].writer
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    pending = await fill_queue(api, heartbeats_lock, token, start)
    process = psutil.Process()
    big = batch(500, start)  # ~40 kB each, at the documented batch maximum
    gc.collect()
    rss_before = process.memory_info().rss
    statuses: list[int] = []
    for _ in range(10):
        rs = await asyncio.gather(
            *(api.client.post("/v1/heartbeats", json=big, headers=dev(token)) for _ in range(50))
        )
        statuses += [r.status for r in rs]
        assert writer.queued_rows <= writer.queue_max_rows
    gc.collect()
    growth = process.memory_info().rss - rss_before
    assert statuses == [503] * 500
    # 500 refused requests carried ~20 MB of bodies; none of it may stay behind.
    assert growth < 15 * 1024 * 1024, growth
    await heartbeats_lock.release()
    assert [r.status for r in await asyncio.gather(*pending)] == [200] * 6
    assert await api.count("SELECT count(*) FROM device_heartbeats WHERE device_id = 'busy-2'") == 60


async def test_stalled_database_gets_503_quickly_before_the_queue_is_full(
    api: Api, heartbeats_lock: HeartbeatsLock
) -> None:
    token = await api.enroll("busy-3")
    writer = api.app[SERVICES].writer
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    await heartbeats_lock.hold()
    first = asyncio.create_task(api.client.post("/v1/heartbeats", json=batch(2, start), headers=dev(token)))
    await wait_until(lambda: writer.watchdog.stalled, within=writer.watchdog.stall_after + 3)
    assert writer.queued_rows < writer.queue_max_rows
    t0 = time.perf_counter()
    r = await api.client.post("/v1/heartbeats", json=batch(1, start + timedelta(hours=1)), headers=dev(token))
    elapsed = time.perf_counter() - t0
    assert r.status == 503 and r.headers["Retry-After"] == "1"
    assert (await r.json())["error"]["code"] == "storage_stalled"
    assert elapsed < 0.1
    # Reads need the database too: refused at once, not after the pool's command timeout.
    t0 = time.perf_counter()
    read = await api.client.get("/v1/devices/busy-3/heartbeats", headers=api.op())
    assert read.status == 503 and read.headers["Retry-After"] == "1"
    assert time.perf_counter() - t0 < 0.1
    assert (await api.client.get("/health/live")).status == 200
    await heartbeats_lock.release()
    assert (await first).status == 200
    await wait_until(lambda: api.app[SERVICES].watchdog.stalled_for() == 0.0)
    r = await api.client.post("/v1/heartbeats", json=batch(1, start + timedelta(hours=1)), headers=dev(token))
    assert r.status == 200
    metrics = await (await api.client.get("/metrics")).text()
    assert 'telemetry_shed_requests_total{route="/v1/heartbeats"} 1.0' in metrics


async def test_a_write_waiting_past_ack_timeout_gets_503_and_is_never_acknowledged(
    api: Api, heartbeats_lock: HeartbeatsLock
) -> None:
    token = await api.enroll("busy-4")
    writer = api.app[SERVICES].writer
    writer.ack_timeout = 0.5
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    await heartbeats_lock.hold()
    try:
        r = await api.client.post("/v1/heartbeats", json=batch(3, start), headers=dev(token))
        assert r.status == 503
        assert (await r.json())["error"]["code"] == "commit_unconfirmed"
    finally:
        await heartbeats_lock.release()
    # The flush went on: the rows land once the lock is gone, and a retry is absorbed (idempotent).
    await wait_until(lambda: api.app[SERVICES].watchdog.stalled_for() == 0.0)
    retry = await api.client.post("/v1/heartbeats", json=batch(3, start), headers=dev(token))
    assert retry.status == 200
    assert [x["stored"] for x in (await retry.json())["results"]] == [False, False, False]
    assert await api.count("SELECT count(*) FROM device_heartbeats WHERE device_id = 'busy-4'") == 3


async def test_a_read_stuck_on_the_database_sheds_writes_too(
    api: Api, heartbeats_lock: HeartbeatsLock
) -> None:
    """No flush is running: the only call waiting is a read blocked by the lock."""
    token = await api.enroll("busy-5")
    watchdog = api.app[SERVICES].watchdog
    await heartbeats_lock.hold()
    try:
        read = asyncio.create_task(api.client.get("/v1/devices/busy-5/heartbeats", headers=api.op()))
        await wait_until(lambda: watchdog.stalled, within=watchdog.stall_after + 3)
        t0 = time.perf_counter()
        r = await api.client.post(
            "/v1/heartbeats", json={"status": "ok", "battery_pct": 5}, headers=dev(token)
        )
        assert r.status == 503 and (await r.json())["error"]["code"] == "storage_stalled"
        assert time.perf_counter() - t0 < 0.1
    finally:
        await heartbeats_lock.release()
    assert (await read).status == 200
    r = await api.client.post("/v1/heartbeats", json={"status": "ok", "battery_pct": 5}, headers=dev(token))
    assert r.status == 200
