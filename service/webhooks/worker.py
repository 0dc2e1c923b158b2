"""The webhook worker of one instance: fan-out, delivery and upkeep loops for the app's life.

* Fan-out (`service.webhooks.fanout`) every `FANOUT_INTERVAL` (and the delivery loop woken
  when it created rows), so an event is claimable a fraction of a second after it is visible.
  With no enabled subscription an idle instance sends one probe per round and no claims.
* Delivery claims due deliveries through the database (`DeliverySender.claim`) whenever it has
  room: at most `IN_FLIGHT` requests in flight from this instance, at most
  `TELEMETRY_WEBHOOK_CONCURRENCY` (8) to one subscription, whose deliveries are not claimed
  while `CLAIM_AHEAD` times that many are claimed, so a slow receiver never holds up
  another's. Each send is its own task: one slow answer does not hold the next claim.
* Upkeep every `UPKEEP_INTERVAL`: the backlog gauges (`telemetry_webhook_pending`,
  `telemetry_webhook_oldest_pending_age_seconds`, read from the database: the same figure in
  every instance) and, every `EXPIRY_INTERVAL`, the expiry of finished deliveries in bounded
  batches: delivered rows after `TELEMETRY_WEBHOOK_KEEP_DELIVERED_SECONDS` (1 day: long enough
  to count and replay them, short enough that 1,000 deliveries/s keep under 100 M rows), dead
  ones once their event would have left the log (`TELEMETRY_RETENTION_EVENTS_SECONDS` past
  their retry window): an operator has that long to see and replay them. Pending rows are
  never expired.

Lifecycle: `start` opens the HTTP session (the API's ping uses it too) and, unless
`TELEMETRY_WEBHOOK_WORKER=0`, starts the loops; `stop` stops claiming, gives in-flight sends
`STOP_GRACE` seconds to finish and be recorded, cancels the rest and makes their rows due
again (another instance, or this one restarted, sends them: at least once). A database error
in a loop is logged and the loop goes on after a pause; so is anything else it raises (logged
with its traceback, as the bug it is): nothing ends a loop but `stop`, so a database outage
never leaves an instance that silently stopped delivering.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter

import asyncpg

from service.db.errors import CALL_FAILED, round_failed
from service.metrics import Metrics
from service.settings import Settings
from service.webhooks.delivery import BATCH, DeliverySender
from service.webhooks.fanout import fan_out

log = logging.getLogger(__name__)

FANOUT_INTERVAL = 0.2
DELIVERY_POLL = 0.25  # retries come due on their own; at most this late
CLAIM_COALESCE = 0.005
IN_FLIGHT = 100  # the HTTP connector's limit: every request has a connection
# A subscription's claimed deliveries: at most this many times its concurrency. Those beyond it
# wait for a slot (`DeliverySender.deliver`) and start the moment one is free, with no claim
# between; the lease covers that wait (one attempt before them, then their own). Measured
# (`benchmarks.webhooks`, 4 subscriptions, 1 ms receiver): 939 deliveries/s claiming only
# free slots, CPU-bound well before that with them claimed ahead.
CLAIM_AHEAD = 2
UPKEEP_INTERVAL = 5.0
EXPIRY_INTERVAL = 60.0
EXPIRY_BATCH = 5000
STOP_GRACE = 5.0
ERROR_PAUSE = 1.0

_BACKLOG = """
SELECT count(*) AS pending,
       coalesce(extract(epoch FROM now() - min(d.created_at) FILTER (WHERE s.enabled)), 0) AS oldest
FROM webhook_deliveries d JOIN webhook_subscriptions s ON s.id = d.subscription_id
WHERE d.status = 'pending'
"""
_ANY_ENABLED = "SELECT EXISTS (SELECT 1 FROM webhook_subscriptions WHERE enabled)"
_SUBSCRIPTION_IDS = "SELECT id FROM webhook_subscriptions ORDER BY id"
# Walks the subscription's primary key from its oldest rows; SKIP LOCKED leaves rows another
# instance is expiring (or sending) to it.
_EXPIRE = """
DELETE FROM webhook_deliveries WHERE subscription_id = $1 AND id IN (
    SELECT id FROM webhook_deliveries
    WHERE subscription_id = $1
      AND ((status = 'delivered' AND delivered_at < now() - $2::interval)
           OR (status = 'dead' AND created_at < now() - $3::interval))
    ORDER BY id LIMIT $4
    FOR UPDATE SKIP LOCKED
)
"""


async def _failed(what: str, exc: Exception) -> None:
    await round_failed(log, f"webhook {what}", exc, ERROR_PAUSE)


class WebhookWorker:
    """Fan-out, delivery and upkeep of webhooks in this instance (see the module's docstring)."""

    def __init__(self, pool: asyncpg.Pool, settings: Settings, metrics: Metrics) -> None:
        self._pool = pool
        self._settings = settings
        self._metrics = metrics
        self._sender = DeliverySender(pool, settings, metrics=metrics)
        self._tasks: list[asyncio.Task[None]] = []
        self._in_flight: dict[asyncio.Task[str], asyncpg.Record] = {}
        self._per_subscription: Counter[int] = Counter()
        self._wake = asyncio.Event()
        self._stopping = False
        self._started = False
        self._idle = False  # the last fan-out round found no enabled subscription

    @property
    def sender(self) -> DeliverySender:
        """The instance's sender (the API's ping goes through it); open between start and stop."""
        return self._sender

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    async def start(self) -> None:
        await self._sender.__aenter__()
        self._started = True
        if not self._settings.webhook_worker:
            return
        self._tasks = [
            asyncio.create_task(self._fan_out_loop(), name="webhook-fanout"),
            asyncio.create_task(self._delivery_loop(), name="webhook-delivery"),
            asyncio.create_task(self._upkeep_loop(), name="webhook-upkeep"),
        ]

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self._in_flight:
            _, unfinished = await asyncio.wait(list(self._in_flight), timeout=STOP_GRACE)
            rows = [self._in_flight[t] for t in unfinished]
            for task in unfinished:
                task.cancel()
            await asyncio.gather(*unfinished, return_exceptions=True)
            with contextlib.suppress(*CALL_FAILED):
                await self._sender.release(rows)
        if self._started:
            await self._sender.__aexit__(None, None, None)
            self._started = False

    async def _fan_out_loop(self) -> None:
        while True:
            try:
                async with self._pool.acquire() as conn:
                    # No enabled subscription (the common idle case): one probe, and no claims.
                    self._idle = not await conn.fetchval(_ANY_ENABLED)
                    created = 0 if self._idle else await fan_out(conn)
            except Exception as exc:
                await _failed("fan-out", exc)
                continue
            if created:
                self._wake.set()
            await asyncio.sleep(FANOUT_INTERVAL)

    async def _delivery_loop(self) -> None:
        per_subscription = self._sender.per_subscription
        while not self._stopping:
            room = min(IN_FLIGHT - len(self._in_flight), BATCH)
            if room <= 0:
                await asyncio.wait(list(self._in_flight), return_when=asyncio.FIRST_COMPLETED)
                continue
            busy = [sub for sub, n in self._per_subscription.items() if n >= CLAIM_AHEAD * per_subscription]
            self._wake.clear()
            if self._idle:
                # Deliveries are claimed only for enabled subscriptions, and there is none.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), DELIVERY_POLL)
                continue
            try:
                rows = await self._sender.claim(room, busy)
            except Exception as exc:
                await _failed("claim", exc)
                continue
            for row in rows:
                task = asyncio.create_task(self._sender.deliver(row), name="webhook-send")
                self._in_flight[task] = row
                self._per_subscription[row["subscription_id"]] += 1
                task.add_done_callback(self._sent)
            if len(rows) < room:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), DELIVERY_POLL)
                if self._in_flight:
                    # Woken by a finished send: let the others finishing now come too, so one
                    # claim serves many (a claim per send would cost a statement per delivery).
                    await asyncio.sleep(CLAIM_COALESCE)

    def _sent(self, task: asyncio.Task[str]) -> None:
        row = self._in_flight.pop(task)
        sub = row["subscription_id"]
        self._per_subscription[sub] -= 1
        if self._per_subscription[sub] <= 0:
            del self._per_subscription[sub]
        if not task.cancelled() and task.exception() is not None:
            # The outcome could not be recorded: the row stays claimed and is sent again once
            # its lease passed.
            log.warning("webhook delivery %s not recorded: %s", row["id"], task.exception())
        self._wake.set()

    async def _upkeep_loop(self) -> None:
        since_expiry = EXPIRY_INTERVAL  # expire in the first round too
        while True:
            try:
                await self.refresh_gauges()
                if since_expiry >= EXPIRY_INTERVAL:
                    since_expiry = 0.0
                    await self.expire()
            except Exception as exc:
                await _failed("upkeep", exc)
                continue
            await asyncio.sleep(UPKEEP_INTERVAL)
            since_expiry += UPKEEP_INTERVAL

    async def refresh_gauges(self) -> None:
        row = await self._pool.fetchrow(_BACKLOG)
        self._metrics.webhook_pending.set(row["pending"])
        self._metrics.webhook_oldest_pending_age.set(float(row["oldest"]))

    async def expire(self) -> int:
        """Delete finished deliveries past their keep (see the module's docstring), in batches of
        EXPIRY_BATCH; how many were deleted."""
        keep_dead = self._settings.webhook_retry + self._settings.retention.events
        deleted = 0
        for (sub_id,) in await self._pool.fetch(_SUBSCRIPTION_IDS):
            while True:
                status = await self._pool.execute(
                    _EXPIRE, sub_id, self._settings.webhook_keep_delivered, keep_dead, EXPIRY_BATCH
                )
                n = int(status.split()[-1])
                deleted += n
                if n < EXPIRY_BATCH or self._stopping:
                    break
        return deleted


__all__ = ["WebhookWorker"]
