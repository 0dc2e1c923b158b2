"""The service as its own process, SIGKILLed while deliveries are in flight and started again:
every event is delivered at least once, and the duplicates are at most the deliveries that were
in flight when it died (at most `TELEMETRY_WEBHOOK_CONCURRENCY` for one subscription)."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import aiohttp
import asyncpg

from service.events import log
from service.events.catalogue import DeviceRevoked
from service.ingest.connection import set_json_codecs
from service.settings import StorageMode
from service.webhooks.subscriptions import create_subscription
from tests.faults.harness import service
from tests.webhooks.receiver import Receiver

EVENTS = 200
CONCURRENCY = 8


async def first_round(base_url: str, within: float = 60.0) -> None:
    """Until the service's first maintenance round has set the retention gauges."""
    async with aiohttp.ClientSession() as session, asyncio.timeout(within):
        while True:
            async with session.get(f"{base_url}/metrics") as r:
                if "telemetry_retention_oldest_row_age_seconds{" in await r.text():
                    return
            await asyncio.sleep(0.1)


async def test_a_service_killed_mid_delivery_and_restarted_delivers_every_event_at_least_once(
    db_url: str, mode: StorageMode, tmp_path: Path
) -> None:
    receiver = Receiver(delay=0.1)  # 8 at a time: about 80 a second, so the kill finds some in flight
    await receiver.start()
    conn = await asyncpg.connect(db_url)
    await set_json_codecs(conn)
    env = {
        "TELEMETRY_WEBHOOK_ALLOW_PRIVATE": "1",
        # The lease of a claimed delivery: 15 s. A shorter timeout lets a busy machine time out an
        # answered request, whose retry is a duplicate that no crash caused.
        "TELEMETRY_WEBHOOK_TIMEOUT_SECONDS": "5",
        "TELEMETRY_WEBHOOK_CONCURRENCY": str(CONCURRENCY),
    }
    first = service(db_url, mode, tmp_path, "first", **env)
    second = service(db_url, mode, tmp_path, "second", **env)
    try:
        await asyncio.to_thread(first.start)
        # The kill lands mid-delivery, not mid-maintenance: in timescale mode the first round
        # runs the test database's jobs itself (the test cluster's scheduler slots are few),
        # the events table's retention among them, as the in-process worker tests wait for too.
        await first_round(first.base_url)
        created = await create_subscription(conn, receiver.url, None, "crash", allow_private=True)
        receiver.secret = created.secret
        async with conn.transaction():
            for i in range(EVENTS):
                await log.record(conn, DeviceRevoked(by="alice"), f"crash-{i}")
        ids = {
            f"evt_{r['id']}" for r in await conn.fetch("SELECT id FROM events WHERE device_id LIKE 'crash-%'")
        }
        await receiver.until(lambda: len(receiver.received) >= 40, within=60)
        assert first.proc is not None
        first.proc.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        await asyncio.to_thread(first.proc.wait, 10)
        before_restart = len(receiver.received)
        assert before_restart < EVENTS  # it died mid-way
        await asyncio.to_thread(second.start)
        await receiver.until(lambda: set(receiver.delivered_ids()) == ids, within=90)
        # The ones sent but not recorded when it died are sent again once their lease passed.
        async with asyncio.timeout(60):
            while True:
                pending = await conn.fetchval(
                    "SELECT count(*) FROM webhook_deliveries WHERE status = 'pending'"
                )
                if pending == 0:
                    break
                await asyncio.sleep(0.2)
        await asyncio.sleep(1)  # a late duplicate would show now
        took = time.monotonic() - killed_at
        delivered = receiver.delivered_ids()
        duplicates = sum(delivered.values()) - EVENTS
        assert 0 <= duplicates <= CONCURRENCY, (duplicates, delivered.most_common(3))
        assert receiver.forged == 0
        status = await conn.fetch("SELECT status, count(*) FROM webhook_deliveries GROUP BY status")
        assert {r["status"]: r["count"] for r in status} == {"delivered": EVENTS}
        print(
            f"\nkill[{mode}]: {before_restart} received before the kill, {duplicates} duplicates,"
            f" all {EVENTS} delivered {took:.1f} s after it"
        )
    finally:
        await asyncio.to_thread(second.stop)
        await asyncio.to_thread(first.stop)
        await conn.close()
        await receiver.stop()
