"""The push worker of one instance: claims queued pushes and sends each through FCM.

* Claims due pushes through the database (`service.push.outbox.claim`), in batches, up to
  `TELEMETRY_FCM_MAX_CONNECTIONS` (64) ahead of the sends, so a send slot that frees never waits
  for a claim's round trip: at most that many sends at once from this instance, each its own task
  making one `FcmSender.send` (one attempt; a slow answer holds up no other), and at most as many
  more answered but not yet recorded. It polls every `POLL` seconds (retries come due on their
  own) and is woken at once by a dispatch this instance committed (`wake`), so a push leaves a
  few milliseconds after its dispatch's 2xx.
* Each answer is decided here: 200 is `sent` (message name, `pushed_at`); a final answer
  (`INVALID_ARGUMENT`, `SENDER_ID_MISMATCH`, `UNREGISTERED`, other 4xx) is `failed`, and
  `UNREGISTERED` invalidates the token in the same transaction; 429, 5xx, timeouts and lost
  connections are `queued` again after the sender's backoff (doubling, jitter, never sooner than
  `Retry-After`), unless that would reach the push's `expires_at` (the command's TTL): then
  `failed`. A push claimed past its TTL, or whose command was cancelled meanwhile, is `failed`
  unsent; a device without a valid token at claim time is `no_token` unsent.
* Outcomes that come in together are recorded in one statement (`outbox.record`), each only
  while its claim is in force. Sent-and-unrecorded pushes (what a crash can send twice) are at
  most twice `TELEMETRY_FCM_MAX_CONNECTIONS`: the sends in flight and the answers waiting for
  their record. Claimed-and-unsent ones are not sent twice: they are sent once their lease passed.

The backlog gauges (`telemetry_push_queued`, `telemetry_push_oldest_queued_age_seconds`) are
read from the database every `GAUGE_INTERVAL` seconds: the same figure from every instance.

Lifecycle (a `service.app.Background`): `start` starts the loop unless `TELEMETRY_PUSH_WORKER=0`;
`stop` stops claiming, gives in-flight sends `STOP_GRACE` seconds to finish and be recorded,
cancels the rest and makes their rows and the claimed-but-unsent ones due again (released for
the next instance), then closes the sender. A failed round (database away, or a bug, logged
with its traceback) is logged and the loop goes on after `ERROR_PAUSE`: nothing ends it but
`stop`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from datetime import UTC, datetime, timedelta

import asyncpg

from service.db.errors import CALL_FAILED, round_failed
from service.metrics import Metrics
from service.push import outbox
from service.push.fcm import FcmSender, Outcome, SendResult
from service.push.messages import command_push
from service.push.outbox import Claim, PushStatus
from service.settings import Settings

log = logging.getLogger(__name__)

POLL = 0.25
CLAIM_COALESCE = 0.005
BATCH = 256
RECORD_BATCH = 1000
STOP_GRACE = 5.0
ERROR_PAUSE = 1.0
GAUGE_INTERVAL = 5.0


async def _failed(what: str, exc: BaseException) -> None:
    await round_failed(log, f"push {what}", exc, ERROR_PAUSE)


class PushWorker:
    """Claims and sends this instance's share of the outbox (see the module's docstring)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        settings: Settings,
        sender: FcmSender,
        metrics: Metrics,
        *,
        in_flight: int | None = None,
    ) -> None:
        self._pool = pool
        self._settings = settings
        self._sender = sender
        self._metrics = metrics
        self._limit = in_flight or settings.fcm_max_connections
        timeout = settings.fcm_timeout.total_seconds()
        # The lease outlives a claim's wait in `_ready` (at most one attempt's time: as many
        # are claimed ahead as are sent at once), the attempt, and the wait for its record.
        self._lease = timedelta(seconds=3 * timeout + 5)
        self._ready: collections.deque[Claim] = collections.deque()  # claimed, not yet sent
        self._sending = 0
        self._unrecorded = 0  # answered, outcome not yet committed
        self._tasks: dict[asyncio.Task[None], Claim] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._gauges: asyncio.Task[None] | None = None
        self._stopping = False
        self._to_record: list[tuple[outbox.Outcome, asyncio.Future[bool]]] = []
        self._recorder: asyncio.Task[None] | None = None

    @property
    def in_flight(self) -> int:
        """Pushes sent or being sent whose outcome is not committed (what a crash may repeat)."""
        return self._sending + self._unrecorded

    def wake(self) -> None:
        """A push was queued in this instance: claim now rather than at the next poll."""
        self._wake.set()

    async def start(self) -> None:
        log.info("push: FCM configured (project %s)", self._sender.project_id)
        if self._settings.push_worker:
            self._task = asyncio.create_task(self._claim_loop(), name="push-claims")
            self._gauges = asyncio.create_task(self._gauge_loop(), name="push-gauges")

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._gauges is not None:
            self._gauges.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._gauges
            self._gauges = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        unsent = list(self._ready)
        self._ready.clear()
        if self._tasks:
            _, unfinished = await asyncio.wait(list(self._tasks), timeout=STOP_GRACE)
            unsent += [self._tasks[t] for t in unfinished]
            for task in unfinished:
                task.cancel()
            await asyncio.gather(*unfinished, return_exceptions=True)
        with contextlib.suppress(*CALL_FAILED):
            await outbox.release(self._pool, unsent)
        await self._sender.close()

    async def refresh_gauges(self) -> None:
        """The backlog gauges from the database (`telemetry_push_queued`, `…_oldest_queued_age_seconds`)."""
        row = await self._pool.fetchrow(outbox.BACKLOG)
        self._metrics.push_queued.set(row["queued"])
        self._metrics.push_oldest_queued_age.set(row["oldest"])

    async def _gauge_loop(self) -> None:
        while True:
            try:
                await self.refresh_gauges()
            except Exception as exc:
                await _failed("gauges", exc)
                continue
            await asyncio.sleep(GAUGE_INTERVAL)

    async def _claim_loop(self) -> None:
        # Claims run ahead of the sends by up to `limit` pushes, so a send slot that frees never
        # waits for a claim's round trip; claims are batched (one statement for many pushes).
        while not self._stopping:
            room = min(2 * self._limit - self._sending - len(self._ready), BATCH)
            if room < min(self._limit, BATCH) // 4 and self._sending:
                # Enough claimed ahead: wait for sends to finish before the next claim.
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), POLL)
                continue
            self._wake.clear()
            try:
                claims = await outbox.claim(self._pool, room, self._lease)
            except Exception as exc:
                await _failed("claim", exc)
                continue
            self._ready.extend(claims)
            self._start_sends()
            if len(claims) < room:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), POLL)
                if self._sending:
                    # Woken by a finished send: let the others finishing now come too, so one
                    # claim serves many.
                    await asyncio.sleep(CLAIM_COALESCE)

    def _start_sends(self) -> None:
        """Send claimed pushes while a slot is free: at most `limit` sends at once, and at most
        `limit` more answered and not yet recorded (what a crash can send twice)."""
        while self._ready and self._sending < self._limit and self.in_flight < 2 * self._limit:
            claim = self._ready.popleft()
            self._sending += 1
            task = asyncio.create_task(self.push(claim), name="push-send")
            self._tasks[task] = claim
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        claim = self._tasks.pop(task)
        if not task.cancelled() and task.exception() is not None:
            # Not recorded: the row stays claimed and is sent again once its lease passed.
            log.warning("push of %s not recorded: %r", claim.request_id, task.exception())

    async def push(self, claim: Claim) -> None:
        """Send one claimed push (or decide it unsent) and record its outcome; returns once the
        outcome is committed, raises what the database raised."""
        try:
            outcome = await self._attempt(claim)
        finally:
            self._sending -= 1
        self._unrecorded += 1
        try:
            self._start_sends()
            self._wake.set()
            recorded = await self._record(outcome)
        finally:
            self._unrecorded -= 1
            self._start_sends()
        if recorded:
            label = "retried" if outcome.status is PushStatus.QUEUED else outcome.status.value
            self._metrics.fcm_sends.labels(label).inc()

    async def _attempt(self, claim: Claim) -> outbox.Outcome:
        now = datetime.now(UTC)
        remaining = (claim.expires_at - now).total_seconds()
        if remaining <= 0:
            return outbox.Outcome(claim, PushStatus.FAILED, now, error="TTL reached before sending")
        if claim.cancelled:
            return outbox.Outcome(claim, PushStatus.FAILED, now, error="command cancelled before its push")
        if claim.token is None:
            return outbox.Outcome(claim, PushStatus.NO_TOKEN, now)
        message = command_push(
            claim.token,
            claim.request_id,
            claim.action,
            claim.expires_at - now,  # what is left of the command's TTL
            self._settings.fcm_urgent_actions,
        )
        started = time.perf_counter()
        result = await self._sender.send(message, budget=remaining)
        self._metrics.fcm_send_seconds.observe(time.perf_counter() - started)
        return self._decide(claim, result, datetime.now(UTC))

    def _decide(self, claim: Claim, result: SendResult, at: datetime) -> outbox.Outcome:
        if result.outcome is Outcome.SENT:
            return outbox.Outcome(
                claim, PushStatus.SENT, at, http_status=result.http_status, message_name=result.message_name
            )
        if result.outcome is Outcome.FINAL:
            return outbox.Outcome(
                claim,
                PushStatus.FAILED,
                at,
                http_status=result.http_status,
                error=result.error,
                unregistered=result.unregistered,
            )
        # A refused access token (401) was dropped by the sender: the first time, try again now.
        if result.http_status == 401 and claim.attempts == 1:
            delay = 0.0
        else:
            delay = self._sender.policy.delay(claim.attempts, result.retry_after)
        if (claim.expires_at - at).total_seconds() <= delay:
            error = f"{result.error}; retries stopped at the command's TTL"
            return outbox.Outcome(claim, PushStatus.FAILED, at, http_status=result.http_status, error=error)
        return outbox.Outcome(
            claim, PushStatus.QUEUED, at, delay=delay, http_status=result.http_status, error=result.error
        )

    async def _record(self, outcome: outbox.Outcome) -> bool:
        """Queue `outcome` for the next record statement (group commit) and wait until it is
        committed; whether it was recorded (its claim was still in force)."""
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._to_record.append((outcome, done))
        if self._recorder is None or self._recorder.done():
            self._recorder = asyncio.create_task(self._record_queued(), name="push-record")
        return await done

    async def _record_queued(self) -> None:
        while self._to_record:
            batch, self._to_record = self._to_record[:RECORD_BATCH], self._to_record[RECORD_BATCH:]
            try:
                recorded = await outbox.record(self._pool, [o for o, _ in batch])
            except BaseException as exc:
                for _, done in batch:
                    if not done.done():
                        done.set_exception(exc if isinstance(exc, Exception) else asyncio.CancelledError())
                if not isinstance(exc, Exception):
                    raise
            else:
                for o, done in batch:
                    if not done.done():
                        done.set_result((o.claim.id, o.claim.device_id) in recorded)
