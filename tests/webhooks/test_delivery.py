"""Webhook deliveries against a local aiohttp receiver that verifies every signature with
`standardwebhooks`: derived from committed events only, retried with backoff and Retry-After,
dead after the retry window or on 410 (which disables the subscription), SSRF refused."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from standardwebhooks.webhooks import Webhook

from service.events import log
from service.events.catalogue import DeviceRevoked
from service.settings import Settings
from service.webhooks.delivery import DeliverySender, backoff, retry_after
from service.webhooks.fanout import fan_out
from service.webhooks.subscriptions import create_subscription, replay_deliveries
from service.webhooks.urls import UrlRefused, check_url


@dataclass
class Receiver:
    """Answers each request with the next of `answers` (then 200), after verifying it."""

    secret: str = ""
    answers: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    received: list[dict[str, Any]] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    url: str = ""
    delay: float = 0.0  # seconds before answering

    async def handle(self, request: web.Request) -> web.Response:
        await asyncio.sleep(self.delay)
        body = await request.text()
        payload = Webhook(self.secret).verify(body, dict(request.headers))  # raises if forged
        self.received.append(payload)
        self.ids.append(request.headers["webhook-id"])
        status, headers = self.answers.pop(0) if self.answers else (200, {})
        return web.Response(status=status, headers=headers, text="x" * 5000 if status >= 400 else "ok")


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/hook", rec.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    rec.url = f"http://127.0.0.1:{port}/hook"
    try:
        yield rec
    finally:
        await runner.cleanup()


def settings(**kw: Any) -> Settings:
    return replace(
        Settings(), **{"webhook_allow_private": True, "webhook_timeout": timedelta(seconds=2), **kw}
    )


async def subscribe(pool: asyncpg.Pool, rec: Receiver, types: list[str] | None = None) -> int:
    async with pool.acquire() as conn:
        created = await create_subscription(conn, rec.url, types, "test", allow_private=True)
    rec.secret = created.secret
    assert created.secret.startswith("whsec_")
    return created.id


async def revoke_events(pool: asyncpg.Pool, devices: list[str]) -> None:
    async with pool.acquire() as conn, conn.transaction():
        for d in devices:
            await log.record(conn, DeviceRevoked(by="alice"), d)


async def deliveries(pool: asyncpg.Pool, sub_id: int) -> list[asyncpg.Record]:
    return await pool.fetch(
        "SELECT * FROM webhook_deliveries WHERE subscription_id = $1 ORDER BY event_id", sub_id
    )


async def make_due(pool: asyncpg.Pool) -> None:
    await pool.execute("UPDATE webhook_deliveries SET next_attempt_at = now() WHERE status = 'pending'")


async def test_committed_events_are_delivered_signed_once_and_a_rolled_back_one_never(
    pool: asyncpg.Pool, receiver: Receiver
) -> None:
    await revoke_events(pool, ["before-subscribing"])
    sub = await subscribe(pool, receiver, ["device.revoked"])
    await revoke_events(pool, ["wh-1", "wh-2"])
    with pytest.raises(RuntimeError):
        async with pool.acquire() as conn, conn.transaction():
            await log.record(conn, DeviceRevoked(by="alice"), "rolled-back")
            raise RuntimeError
    async with pool.acquire() as conn:
        assert await fan_out(conn) == 2
        assert await fan_out(conn) == 0  # the cursor moved with the rows
    async with DeliverySender(pool, settings()) as sender:
        first = await sender.run_once()
        second = await sender.run_once()
    assert (first.claimed, first.delivered, second.claimed) == (2, 2, 0)
    assert [p["device_id"] for p in receiver.received] == ["wh-1", "wh-2"]
    assert all(p["type"] == "device.revoked" and p["payload"] == {"by": "alice"} for p in receiver.received)
    rows = await deliveries(pool, sub)
    assert [(r["status"], r["attempts"], r["last_status_code"]) for r in rows] == [("delivered", 1, 200)] * 2
    assert receiver.ids == [f"evt_{r['event_id']}" for r in rows]


async def test_a_failing_receiver_gets_retries_with_backoff_then_the_event(
    pool: asyncpg.Pool, receiver: Receiver
) -> None:
    sub = await subscribe(pool, receiver)
    await revoke_events(pool, ["retry-1"])
    receiver.answers = [(500, {}), (429, {"Retry-After": "120"})]
    async with pool.acquire() as conn:
        await fan_out(conn)
    async with DeliverySender(pool, settings()) as sender:
        assert (await sender.run_once()).retried == 1
        (row,) = await deliveries(pool, sub)
        assert row["status"] == "pending" and row["last_status_code"] == 500
        assert len(row["last_error"]) == 1024  # at most 1 KB of the answer is kept
        wait = (row["next_attempt_at"] - datetime.now(UTC)).total_seconds()
        assert 0 < wait <= 1.01  # first backoff: 0.5-1 s
        assert (await sender.run_once()).claimed == 0  # not due yet
        await make_due(pool)
        assert (await sender.run_once()).retried == 1
        (row,) = await deliveries(pool, sub)
        wait = (row["next_attempt_at"] - datetime.now(UTC)).total_seconds()
        assert row["last_status_code"] == 429 and 110 < wait <= 120  # Retry-After, not backoff
        await make_due(pool)
        assert (await sender.run_once()).delivered == 1
    (row,) = await deliveries(pool, sub)
    assert (row["status"], row["attempts"]) == ("delivered", 3)
    assert len(set(receiver.ids)) == 1  # the same webhook-id on every attempt


async def test_a_delivery_replayed_while_in_flight_is_sent_again_and_a_late_outcome_is_dropped(
    pool: asyncpg.Pool, receiver: Receiver
) -> None:
    """The outcome of an attempt is recorded only while its claim is in force: a replay that
    came in meanwhile is not undone by it (the replay is sent), nor is a newer claim taken once
    the lease passed (its outcome is the one kept)."""
    sub = await subscribe(pool, receiver)
    await revoke_events(pool, ["in-flight"])
    async with pool.acquire() as conn:
        assert await fan_out(conn) == 1
    async with DeliverySender(pool, settings()) as sender:
        (claimed,) = await sender.claim()
        async with pool.acquire() as conn:
            replayed = await replay_deliveries(conn, sub, [claimed["id"]])
        assert replayed is not None and replayed.replayed == 1
        assert await sender.deliver(claimed) == "delivered"  # sent; its outcome is not kept
        (row,) = await deliveries(pool, sub)
        assert (row["status"], row["attempts"], row["delivered_at"]) == ("pending", 0, None)
        again = await sender.run_once()
        assert (again.claimed, again.delivered) == (1, 1)
        # A claim whose lease passed and was claimed again: the late outcome is dropped.
        await revoke_events(pool, ["lease-passed"])
        async with pool.acquire() as conn:
            assert await fan_out(conn) == 1
        (stale,) = await sender.claim()
        await make_due(pool)
        (newer,) = await sender.claim()
        receiver.answers = [(200, {}), (500, {})]
        assert await sender.deliver(newer) == "delivered"
        assert await sender.deliver(stale) == "retried"  # what it saw, not what is kept
    rows = await deliveries(pool, sub)
    assert [(r["status"], r["attempts"]) for r in rows] == [("delivered", 1), ("delivered", 2)]
    assert [p["device_id"] for p in receiver.received] == ["in-flight"] * 2 + ["lease-passed"] * 2


async def test_a_410_kills_the_delivery_and_disables_the_subscription(
    pool: asyncpg.Pool, receiver: Receiver
) -> None:
    sub = await subscribe(pool, receiver)
    await revoke_events(pool, ["gone-1"])
    receiver.answers = [(410, {})]
    async with pool.acquire() as conn:
        await fan_out(conn)
    async with DeliverySender(pool, settings()) as sender:
        assert (await sender.run_once()).dead == 1
    (row,) = await deliveries(pool, sub)
    assert row["status"] == "dead" and row["last_status_code"] == 410
    enabled, reason = await pool.fetchrow(
        "SELECT enabled, disabled_reason FROM webhook_subscriptions WHERE id = $1", sub
    )
    assert (enabled, reason) == (False, "gone (410)")
    await revoke_events(pool, ["gone-2"])
    async with pool.acquire() as conn:
        assert await fan_out(conn) == 0  # a disabled subscription gets nothing new


async def test_past_the_retry_window_a_delivery_is_dead_not_dropped(
    pool: asyncpg.Pool, receiver: Receiver
) -> None:
    sub = await subscribe(pool, receiver)
    await revoke_events(pool, ["late-1"])
    receiver.answers = [(500, {})]
    async with pool.acquire() as conn:
        await fan_out(conn)
    await pool.execute("UPDATE webhook_deliveries SET created_at = now() - interval '25 hours'")
    async with DeliverySender(pool, settings()) as sender:
        assert (await sender.run_once()).dead == 1
    (row,) = await deliveries(pool, sub)
    assert (row["status"], row["attempts"], row["last_status_code"]) == ("dead", 1, 500)


async def test_a_receiver_that_answers_too_slowly_is_retried(pool: asyncpg.Pool, receiver: Receiver) -> None:
    sub = await subscribe(pool, receiver)
    await revoke_events(pool, ["slow-1"])
    receiver.delay = 2.0
    async with pool.acquire() as conn:
        await fan_out(conn)
    async with DeliverySender(pool, settings(webhook_timeout=timedelta(seconds=0.5))) as sender:
        started = asyncio.get_running_loop().time()
        assert (await sender.run_once()).retried == 1
        assert asyncio.get_running_loop().time() - started < 1.5
    (row,) = await deliveries(pool, sub)
    assert row["status"] == "pending" and row["last_error"].startswith("timed out")


async def test_private_addresses_are_refused_at_subscription_and_at_connect_time(
    pool: asyncpg.Pool, receiver: Receiver
) -> None:
    for url in (
        receiver.url,
        "http://169.254.169.254/latest/meta-data",
        "http://10.0.0.1/x",
        "http://[::1]/x",
    ):
        with pytest.raises(UrlRefused):
            await check_url(url, allow_private=False)
    for url in (
        "ftp://example.com/x",
        "http://user:pw@example.com/x",
        "http:///x",
        "https://e.com/" + "a" * 2048,
    ):
        with pytest.raises(UrlRefused):
            await check_url(url, allow_private=True)
    # Allowed when it was created, refused when it connects (as if DNS had changed).
    sub = await subscribe(pool, receiver)
    await revoke_events(pool, ["ssrf-1"])
    async with pool.acquire() as conn:
        await fan_out(conn)
    async with DeliverySender(pool, replace(settings(), webhook_allow_private=False)) as sender:
        assert (await sender.run_once()).retried == 1
    (row,) = await deliveries(pool, sub)
    assert row["status"] == "pending" and "may not reach" in row["last_error"]
    # A name, not an IP literal: the connector's resolver refuses what it resolves to.
    await pool.execute("DELETE FROM webhook_subscriptions")
    receiver.url = receiver.url.replace("127.0.0.1", "localhost")
    sub = await subscribe(pool, receiver)
    await revoke_events(pool, ["ssrf-2"])
    async with pool.acquire() as conn:
        await fan_out(conn)
    async with DeliverySender(pool, replace(settings(), webhook_allow_private=False)) as sender:
        assert (await sender.run_once()).retried == 1
    (row,) = await deliveries(pool, sub)
    assert row["status"] == "pending" and "may reach" in row["last_error"], row["last_error"]
    assert receiver.received == []


def test_backoff_doubles_with_jitter_up_to_an_hour_and_retry_after_is_held_to_bounds() -> None:
    def lo() -> float:
        return 0.0

    def hi() -> float:
        return 1.0

    jitters: list[Callable[[], float]] = [lo, hi]
    assert [backoff(n, lo) for n in (1, 2, 3)] == [0.5, 1.0, 2.0]
    assert [backoff(n, hi) for n in (1, 2, 3)] == [1.0, 2.0, 4.0]
    assert all(backoff(40, j) <= 3600 for j in jitters)
    now = datetime(2025, 1, 1, tzinfo=UTC)
    assert retry_after("30", now) == 30
    assert retry_after("0", now) == 1
    assert retry_after("999999", now) == 3600
    assert retry_after("Wed, 01 Jan 2025 00:02:00 GMT", now) == 120
    assert retry_after("soon", now) is None and retry_after(None, now) is None
