"""The worker running in the app, end to end: subscriptions made over HTTP, events committed by
their causes, deliveries to a real local receiver that verifies every signature with
`standardwebhooks`. A receiver down for a while, 429 with Retry-After, 500, a timeout, 410;
two app instances on one database; ping, replay, accounting and metrics, expiry."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from datetime import timedelta
from typing import Any, TypeVar

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from aiohttp.test_utils import TestServer as HttpTestServer

from service.api.webhooks import WEBHOOKS
from service.app import create_app, create_pool
from service.events import log
from service.events.catalogue import DeviceRevoked
from service.ingest.connection import set_json_codecs
from service.migrations.migrator import Migrator
from service.serve import head_revisions
from service.settings import StorageMode
from tests.support.app import Api, first_maintenance_round
from tests.support.cluster import settings_for
from tests.webhooks.receiver import Receiver

TYPE = "device.revoked"
T = TypeVar("T")


@pytest.fixture
def app_settings(db_url: str, mode: StorageMode) -> Any:
    return settings_for(db_url, mode, webhook_allow_private=True, webhook_timeout=timedelta(seconds=1))


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    await rec.start()
    try:
        yield rec
    finally:
        await rec.stop()


async def subscribe(api: Api, rec: Receiver, types: list[str] | None = None) -> int:
    # In timescale mode the first round runs the test database's jobs itself, the events
    # table's retention among them: fan-out would wait on its lock and a test's clock with it.
    await first_maintenance_round(api)
    r = await api.client.post(
        "/v1/webhooks", json={"url": rec.url, "event_types": types or [TYPE]}, headers=api.op()
    )
    assert r.status == 201, await r.text()
    body = await r.json()
    rec.secret = body["secret"]
    return body["id"]


async def eventually(probe: Callable[[], Awaitable[T]], accept: Callable[[T], bool], within: float = 10) -> T:
    """`probe()`'s first value that `accept`s, asked every 50 ms for at most `within` seconds."""
    async with asyncio.timeout(within):
        while True:
            value = await probe()
            if accept(value):
                return value
            await asyncio.sleep(0.05)


async def revoke_events(db_url: str, n: int, tag: str) -> list[int]:
    """`n` device.revoked events committed (one transaction each); their ids."""
    conn = await asyncpg.connect(db_url)
    await set_json_codecs(conn)
    try:
        for i in range(n):
            async with conn.transaction():
                await log.record(conn, DeviceRevoked(by="alice"), f"{tag}-{i}")
        return [
            r["id"]
            for r in await conn.fetch("SELECT id FROM events WHERE device_id LIKE $1 ORDER BY id", f"{tag}-%")
        ]
    finally:
        await conn.close()


async def hook(api: Api, sub: int) -> dict[str, Any]:
    return await (await api.client.get(f"/v1/webhooks/{sub}", headers=api.op())).json()


async def deliveries(api: Api, sub: int, status: str | None = None) -> list[dict[str, Any]]:
    params = {"status": status} if status else {}
    r = await api.client.get(f"/v1/webhooks/{sub}/deliveries", params=params, headers=api.op())
    assert r.status == 200, await r.text()
    return (await r.json())["deliveries"]


async def test_events_committed_by_their_cause_reach_the_receiver_signed_and_counted(
    api: Api, receiver: Receiver
) -> None:
    sub = await subscribe(api, receiver, ["device.enrolled", "device.revoked"])
    for i in range(3):
        await api.enroll(f"wk-{i}")
    assert (await api.client.post("/v1/devices/wk-0/revoke", headers=api.op())).status == 200
    await receiver.until(lambda: len(receiver.delivered_ids()) == 4)
    got = [(r.payload["type"], r.payload["device_id"]) for r in receiver.received]
    assert sorted(got) == sorted(
        [
            ("device.enrolled", "wk-0"),
            ("device.enrolled", "wk-1"),
            ("device.enrolled", "wk-2"),
            ("device.revoked", "wk-0"),
        ]
    )
    assert receiver.forged == 0
    assert all(r.webhook_id == f"evt_{r.payload['id']}" for r in receiver.received)
    h = await eventually(lambda: hook(api, sub), lambda h: h["delivered"] == 4)
    assert (h["pending"], h["failed"], h["dead"], h["delivered"]) == (0, 0, 0, 4)
    metrics = await (await api.client.get("/metrics")).text()
    assert 'telemetry_webhook_deliveries_total{outcome="delivered"} 4.0' in metrics
    assert "telemetry_webhook_delivery_seconds_count 4.0" in metrics
    assert (
        "telemetry_webhook_pending " in metrics and "telemetry_webhook_oldest_pending_age_seconds " in metrics
    )


async def test_a_receiver_down_for_a_while_then_up_gets_every_event(api: Api, receiver: Receiver) -> None:
    sub = await subscribe(api, receiver)
    await receiver.stop()
    ids = await revoke_events(api.db_url, 20, "down")
    failed = await eventually(lambda: deliveries(api, sub, "failed"), lambda d: len(d) == 20)
    assert all(
        d["last_status_code"] is None and d["last_error"].startswith("connection failed") for d in failed
    )
    await asyncio.sleep(1.5)  # down a while: several rounds of retries fail
    await receiver.start()
    await receiver.until(lambda: len(receiver.delivered_ids()) == 20, within=30)
    assert set(receiver.delivered_ids()) == {f"evt_{i}" for i in ids}
    # Received is not yet recorded: each outcome commits with the others that came meanwhile.
    await eventually(lambda: deliveries(api, sub), lambda d: d == [])


async def test_429_is_retried_after_its_retry_after_and_500_with_backoff(
    api: Api, receiver: Receiver
) -> None:
    sub = await subscribe(api, receiver)
    receiver.answers = [(429, {"Retry-After": "2"}), (500, {})]
    (event,) = await revoke_events(api.db_url, 1, "busy")
    await receiver.until(lambda: len(receiver.delivered_ids()) == 1, within=20)
    first, second, third = receiver.received
    assert (first.status, second.status, third.status) == (429, 500, 200)
    assert second.at - first.at >= 1.9  # Retry-After, not the 0.5-1 s backoff
    assert 0.4 <= third.at - second.at <= 3.0  # the second backoff: 1-2 s (plus polling)
    assert {r.webhook_id for r in receiver.received} == {f"evt_{event}"}
    h = await eventually(lambda: hook(api, sub), lambda h: h["delivered"] == 1)
    assert (h["pending"], h["failed"], h["dead"]) == (0, 0, 0)
    metrics = await (await api.client.get("/metrics")).text()
    assert 'telemetry_webhook_deliveries_total{outcome="retried"} 2.0' in metrics


async def test_a_receiver_slower_than_the_timeout_is_retried_until_it_answers_in_time(
    api: Api, receiver: Receiver
) -> None:
    sub = await subscribe(api, receiver)
    receiver.delay = 3.0  # the attempt's total timeout is 1 s
    await revoke_events(api.db_url, 1, "slow")
    failed = await eventually(lambda: deliveries(api, sub, "failed"), bool)
    assert failed[0]["last_error"].startswith("timed out after 1.0 s")
    receiver.delay = 0.0
    await receiver.until(lambda: len(receiver.delivered_ids()) == 1, within=20)


async def test_a_410_kills_the_delivery_disables_the_subscription_and_re_enabling_resumes(
    api: Api, receiver: Receiver
) -> None:
    sub = await subscribe(api, receiver)
    receiver.answers = [(410, {})]
    await revoke_events(api.db_url, 1, "gone")
    h = await eventually(lambda: hook(api, sub), lambda h: not h["enabled"])
    assert (h["disabled_reason"], h["dead"]) == ("gone (410)", 1)
    (dead,) = await deliveries(api, sub, "dead")
    assert (dead["status"], dead["last_status_code"], dead["attempts"]) == ("dead", 410, 1)
    later = await revoke_events(api.db_url, 2, "while-gone")
    await asyncio.sleep(1)
    assert len(receiver.received) == 1  # nothing is sent while disabled
    r = await api.client.patch(f"/v1/webhooks/{sub}", json={"enabled": True}, headers=api.op())
    assert r.status == 200
    await receiver.until(lambda: len(receiver.delivered_ids()) == 2)
    assert set(receiver.delivered_ids()) == {f"evt_{i}" for i in later}
    # The dead one again, by its delivery id: the same webhook-id as before.
    r = await api.client.post(
        f"/v1/webhooks/{sub}/replay", json={"delivery_ids": [dead["id"]]}, headers=api.op()
    )
    assert (await r.json())["replayed"] == 1
    await receiver.until(lambda: len(receiver.delivered_ids()) == 3)
    assert receiver.received[-1].webhook_id == receiver.received[0].webhook_id


async def test_replay_from_an_event_sends_every_kept_event_of_the_subscription_again(
    api: Api, receiver: Receiver
) -> None:
    sub = await subscribe(api, receiver)
    ids = await revoke_events(api.db_url, 5, "again")
    await receiver.until(lambda: len(receiver.delivered_ids()) == 5)
    r = await api.client.post(f"/v1/webhooks/{sub}/replay", json={"from_event_id": ids[2]}, headers=api.op())
    assert (await r.json()) == {"replayed": 3, "next_event_id": None, "unknown_delivery_ids": []}
    await receiver.until(lambda: sum(receiver.delivered_ids().values()) == 8)
    assert receiver.delivered_ids() == {f"evt_{i}": (2 if i >= ids[2] else 1) for i in ids}


async def test_ping_sends_a_signed_message_and_answers_what_came_of_it(api: Api, receiver: Receiver) -> None:
    sub = await subscribe(api, receiver)
    r = await api.client.post(f"/v1/webhooks/{sub}/test", headers=api.op())
    body = await r.json()
    assert (r.status, body["delivered"], body["status_code"], body["error"]) == (200, True, 200, None)
    (ping,) = receiver.received
    assert ping.payload["type"] == "webhook.ping" and ping.webhook_id.startswith("ping_")
    await receiver.stop()
    body = await (await api.client.post(f"/v1/webhooks/{sub}/test", headers=api.op())).json()
    assert (body["delivered"], body["status_code"]) == (False, None)
    assert body["error"].startswith("connection failed")
    assert await deliveries(api, sub) == []  # a ping is not a delivery


async def test_two_instances_on_one_database_deliver_each_event_once(
    api: Api, receiver: Receiver, app_settings: Any, mode: StorageMode
) -> None:
    settings = replace(app_settings, database_url=api.db_url)
    pool = await create_pool(api.db_url, settings)
    heads = head_revisions(Migrator(settings=settings, database_url=api.db_url))
    second = TestClient(HttpTestServer(create_app(settings, pool, storage_mode=mode, head_revisions=heads)))
    await second.start_server()
    try:
        receiver.delay = 0.005
        await subscribe(api, receiver)
        ids = await revoke_events(api.db_url, 300, "twice")
        await receiver.until(lambda: len(receiver.delivered_ids()) == 300, within=60)
        await asyncio.sleep(1)  # anything sent twice would have arrived by now
        assert receiver.delivered_ids() == {f"evt_{i}": 1 for i in ids}
        # Both took part.
        counts = []
        for client in (api.client, second):
            text = await (await client.get("/metrics")).text()
            line = next(
                x
                for x in text.splitlines()
                if x.startswith('telemetry_webhook_deliveries_total{outcome="delivered"}')
            )
            counts.append(float(line.split()[-1]))
        assert sum(counts) == 300 and min(counts) > 0, counts
    finally:
        await second.close()
        await pool.close()


async def test_finished_deliveries_expire_and_pending_ones_never(api: Api, receiver: Receiver) -> None:
    sub = await subscribe(api, receiver)
    await revoke_events(api.db_url, 3, "old")
    await receiver.until(lambda: len(receiver.delivered_ids()) == 3)
    await eventually(lambda: hook(api, sub), lambda h: h["delivered"] == 3)  # recorded, too
    await receiver.stop()
    await revoke_events(api.db_url, 2, "stuck")
    await eventually(lambda: deliveries(api, sub, "failed"), lambda d: len(d) == 2)
    conn = await asyncpg.connect(api.db_url)
    try:
        await conn.execute(
            "UPDATE webhook_deliveries SET created_at = now() - interval '30 days',"
            " delivered_at = CASE WHEN status = 'delivered' THEN now() - interval '25 hours' END"
        )
        worker = api.app[WEBHOOKS]
        assert await worker.expire() == 3
        left = await conn.fetch("SELECT status FROM webhook_deliveries")
        assert [r["status"] for r in left] == ["pending", "pending"]
        await worker.refresh_gauges()
        metrics = await (await api.client.get("/metrics")).text()
        assert "telemetry_webhook_pending 2.0" in metrics
        age = next(
            x for x in metrics.splitlines() if x.startswith("telemetry_webhook_oldest_pending_age_seconds ")
        )
        assert float(age.split()[-1]) > 29 * 86400
    finally:
        await conn.close()


async def test_one_slow_subscription_does_not_hold_up_another(api: Api, receiver: Receiver) -> None:
    slow = Receiver(delay=0.5)
    await slow.start()
    try:
        await subscribe(api, slow)
        await subscribe(api, receiver)
        started = time.monotonic()
        await revoke_events(api.db_url, 40, "both")
        await receiver.until(lambda: len(receiver.delivered_ids()) == 40, within=20)
        fast_done = time.monotonic() - started
        # 40 at 8 at a time and 0.5 s each is 2.5 s for the slow one; the fast one is not behind it.
        assert fast_done < 2.0, fast_done
        assert len(slow.received) <= 16
        await slow.until(lambda: len(slow.delivered_ids()) == 40, within=30)
    finally:
        await slow.stop()


async def test_an_answer_holding_nul_bytes_is_kept_as_text_and_fails_no_other_outcome(
    api: Api, receiver: Receiver
) -> None:
    sub = await subscribe(api, receiver)
    receiver.error_body = "bad\x00answer"
    receiver.answers = [(500, {})]
    await revoke_events(api.db_url, 3, "nul")
    (failed,) = await eventually(lambda: deliveries(api, sub, "failed"), lambda d: len(d) == 1)
    assert failed["last_error"] == "bad\ufffdanswer"
    await receiver.until(lambda: len(receiver.delivered_ids()) == 3)
    h = await eventually(lambda: hook(api, sub), lambda h: h["delivered"] == 3)
    assert (h["pending"], h["failed"], h["dead"]) == (0, 0, 0)
