"""A bulk dispatch with FCM configured: each created command's push is queued with it and sent
once; a device without a token is `no_token`; the bulk's counts read the pushes. And the push
backlog gauges the alert rules read."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from service.api.dispatches import PUSH_WORKER
from tests.push.fake_fcm import Answer, FakeFcmServer
from tests.push.test_outbox import launch, with_token

__all__ = ["launch"]  # a fixture


async def test_a_bulk_queues_and_sends_one_push_per_created_command(
    launch: Callable[..., Any], fake_fcm: FakeFcmServer
) -> None:
    async with launch() as instance:
        api = instance.api
        tokens = {}
        for device in ("b-1", "b-2", "b-3"):
            _, tokens[device] = await with_token(api, device)
        await api.enroll("b-4")  # no registration token
        body = {"request_id": "fleet-lock", "action": "lock", "selector": {"filter": {"q": "b-"}}}
        r = await api.client.post("/v1/dispatches/bulk", json=body, headers=api.op())
        assert r.status == 202, await r.text()
        bulk_id = (await r.json())["id"]
        async with asyncio.timeout(30):
            while True:
                r = await api.client.get(f"/v1/dispatches/bulk/{bulk_id}", headers=api.op())
                view = await r.json()
                if view["counts"]["by_push_status"] == {"no_token": 1, "sent": 3}:
                    break
                await asyncio.sleep(0.05)
        assert view["bulk"]["status"] == "created" and view["counts"]["by_status"] == {"pending": 4}
        sent = sorted(m.registration_token for m in fake_fcm.fcm.received)
        assert sent == sorted(tokens.values())  # once each
        data = sorted(m.message["data"]["request_id"] for m in fake_fcm.fcm.received)
        assert data == ["fleet-lock:b-1", "fleet-lock:b-2", "fleet-lock:b-3"]
        # A retried bulk queues nothing more.
        r = await api.client.post("/v1/dispatches/bulk", json=body, headers=api.op())
        assert r.status == 200
        await asyncio.sleep(0.5)
        assert len(fake_fcm.fcm.received) == 3


async def test_the_backlog_gauges_read_the_queued_pushes_from_the_database(
    launch: Callable[..., Any], fake_fcm: FakeFcmServer
) -> None:
    async with launch() as instance:
        api = instance.api
        worker = api.app[PUSH_WORKER]
        _, token = await with_token(api, "slow-1")
        fake_fcm.fcm.script(token, Answer(503, "UNAVAILABLE", retry_after="3600"))
        await worker.refresh_gauges()
        assert instance.metrics.push_queued._value.get() == 0
        assert instance.metrics.push_oldest_queued_age._value.get() == 0
        r = await api.client.post(
            "/v1/dispatches",
            json={"request_id": "slow", "device_id": "slow-1", "action": "lock"},
            headers=api.op(),
        )
        assert r.status == 201
        async with asyncio.timeout(20):
            while True:  # answered 503: queued again, an hour away
                if fake_fcm.fcm.received:
                    break
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        await worker.refresh_gauges()
        assert instance.metrics.push_queued._value.get() == 1
        assert 0 < instance.metrics.push_oldest_queued_age._value.get() < 60
