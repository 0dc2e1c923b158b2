"""Sending due deliveries, signed, and recording what came of each.

Guarantees:
* At least once. A delivery is claimed by an `UPDATE` over `FOR UPDATE SKIP LOCKED` rows that
  counts the attempt and sets a lease (`next_attempt_at` moved past the attempt's longest
  time) and commits before the request is sent; a sender that dies mid-request leaves the row
  pending, claimed again once the lease passed. So N instances send each delivery once in the
  normal case, and a crash causes at most the in-flight deliveries to be sent twice.
* The claims and the outcomes are committed without waiting for the WAL flush
  (`synchronous_commit = off` for those transactions only): visible to every instance at once,
  so claiming stays exclusive, and a database crash can lose only the last fraction of a
  second of them, which makes those deliveries due again: duplicates, never a loss. Outcomes
  that come in together are recorded in one statement (group commit).
* Never silently dropped: every delivery ends `delivered` (2xx) or `dead` (its subscription
  answered 410, which also disables the subscription, or `TELEMETRY_WEBHOOK_RETRY_SECONDS`
  passed since it was created), or stays `pending` with its next attempt due.
* Retries back off exponentially (1 s doubling, at most 1 h, with 50-100 % jitter so failed
  receivers are not hit in step); on 429 and 503 a `Retry-After` (seconds or HTTP date, held
  to 1 s..1 h) decides instead.
* Signed per Standard Webhooks (`webhook-id` = `evt_<event id>`, the same on every attempt,
  so receivers deduplicate; `webhook-timestamp`; `webhook-signature` by `standardwebhooks`).
* Bounded: redirects are not followed, at most 1 KB of a response is read (and kept as the
  error), one attempt takes at most `TELEMETRY_WEBHOOK_TIMEOUT_SECONDS` (connecting at most
  `TELEMETRY_WEBHOOK_CONNECT_TIMEOUT_SECONDS` of it), and at most `per_subscription`
  (`TELEMETRY_WEBHOOK_CONCURRENCY`, 8) requests to one subscription are in flight from one
  instance, so a slow receiver holds neither the others nor every connection.
* Connections go only to addresses `service.webhooks.urls.GuardedResolver` allows.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

import aiohttp
import asyncpg
import msgspec
from standardwebhooks.webhooks import Webhook

from service.metrics import Metrics
from service.settings import Settings
from service.webhooks.urls import GuardedResolver, UrlRefused, check_form, literal_refused

BATCH = 64
RECORD_BATCH = 1000
BACKOFF_BASE = 1.0
BACKOFF_MAX = 3600.0
KEPT_BYTES = 1024

# Due deliveries, at most `per_subscription` of each enabled subscription and none of those in
# `busy` (their in-flight limit is reached in this instance): a slow receiver's backlog is not
# claimed (and its lease not spent waiting) while others have due work. Oldest due first.
_CLAIM = """
WITH due AS (
    SELECT d.subscription_id, d.id, d.next_attempt_at FROM webhook_subscriptions s
    CROSS JOIN LATERAL (
        SELECT d.subscription_id, d.id, d.next_attempt_at FROM webhook_deliveries d
        WHERE d.subscription_id = s.id AND d.status = 'pending' AND d.next_attempt_at <= now()
        ORDER BY d.next_attempt_at
        LIMIT $3
        FOR UPDATE OF d SKIP LOCKED
    ) d
    WHERE s.enabled AND s.id <> ALL($4::bigint[])
    ORDER BY d.next_attempt_at
    LIMIT $1
)
UPDATE webhook_deliveries d SET attempts = d.attempts + 1, next_attempt_at = now() + $2::interval
FROM due, webhook_subscriptions s
WHERE d.subscription_id = due.subscription_id AND d.id = due.id AND s.id = d.subscription_id
RETURNING d.subscription_id, d.id, d.event_id, d.event, d.attempts, d.created_at, s.url, s.secret,
    d.next_attempt_at AS lease
"""
# Outcomes of many attempts in one statement: 'delivered', 'pending' (retried after `delay`
# seconds) or 'dead'. Only for a claim still in force: its lease (the `next_attempt_at` the claim
# set, unique per claiming transaction) is the row's. A row replayed meanwhile (pending again,
# due now) or claimed again after its lease passed keeps what that did: the replay is sent, and
# a late outcome never overwrites a newer claim's.
_RECORD = """
UPDATE webhook_deliveries d SET
    status = k.status,
    delivered_at = CASE WHEN k.status = 'delivered' THEN now() END,
    next_attempt_at = CASE WHEN k.status = 'pending' THEN now() + k.delay * interval '1 second'
                           ELSE d.next_attempt_at END,
    last_status_code = k.code,
    last_error = k.error
FROM unnest($1::bigint[], $2::bigint[], $3::timestamptz[], $4::text[], $5::float8[], $6::int[],
             $7::text[])
    AS k(subscription_id, id, lease, status, delay, code, error)
WHERE d.subscription_id = k.subscription_id AND d.id = k.id AND d.next_attempt_at = k.lease
  AND d.status = 'pending'
"""
# Bookkeeping commits need not wait for the WAL flush: a record lost to a database crash only
# makes its delivery due again (sent twice, never lost), which at-least-once already allows.
_RELAXED = "SET LOCAL synchronous_commit = off"
# Claimed but not sent (shutdown): due again now rather than when the lease passes.
_RELEASE = """
UPDATE webhook_deliveries d SET next_attempt_at = now()
FROM unnest($1::bigint[], $2::bigint[], $3::timestamptz[]) AS k(subscription_id, id, lease)
WHERE d.subscription_id = k.subscription_id AND d.id = k.id AND d.next_attempt_at = k.lease
  AND d.status = 'pending'
"""
_GONE = """
UPDATE webhook_subscriptions SET enabled = false, disabled_reason = 'gone (410)'
WHERE id = ANY($1::bigint[]) AND enabled
"""


@dataclass(frozen=True, slots=True)
class Attempt:
    """What one request came to: a status code (None when no response) and what to keep."""

    status: int | None
    error: str | None
    retry_after: float | None = None


@dataclass(frozen=True, slots=True)
class Round:
    claimed: int = 0
    delivered: int = 0
    retried: int = 0
    dead: int = 0


def backoff(attempts: int, jitter: Callable[[], float] = random.random) -> float:
    """Seconds before attempt `attempts + 1`: 1 s doubling per attempt, at most 1 h, 50-100 %."""
    delay = min(BACKOFF_BASE * 2 ** max(attempts - 1, 0), BACKOFF_MAX)
    return delay * (0.5 + 0.5 * jitter())


def retry_after(value: str | None, now: datetime) -> float | None:
    """A `Retry-After` header in seconds (delta-seconds or an HTTP date), held to 1 s..1 h."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        seconds = float(value)
    else:
        try:
            seconds = (parsedate_to_datetime(value) - now).total_seconds()
        except (TypeError, ValueError):
            return None
    return min(max(seconds, 1.0), BACKOFF_MAX)


def signed_headers(secret: str, msg_id: str, body: str, at: datetime) -> dict[str, str]:
    return {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, at, body),
    }


def _since_event(row: asyncpg.Record) -> float:
    """Seconds from the event's commit-time clock (`occurred_at`) to now."""
    occurred = row["event"].get("occurred_at") if isinstance(row["event"], dict) else None
    try:
        at = datetime.fromisoformat(occurred) if isinstance(occurred, str) else row["created_at"]
    except ValueError:
        at = row["created_at"]
    return max((datetime.now(UTC) - at).total_seconds(), 0.0)


class DeliverySender:
    """Claims and sends due deliveries through one HTTP client session."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        settings: Settings,
        *,
        per_subscription: int | None = None,
        metrics: Metrics | None = None,
    ):
        self._pool = pool
        self._settings = settings
        self._per_subscription = per_subscription or settings.webhook_concurrency
        self._metrics = metrics
        self._limits: dict[int, asyncio.Semaphore] = {}
        total = settings.webhook_timeout.total_seconds()
        connect = min(settings.webhook_connect_timeout.total_seconds(), total)
        self._timeout = aiohttp.ClientTimeout(total=total, connect=connect)
        # The lease outlives the longest attempt and its record (a claim takes at most
        # `per_subscription` of a subscription, so nothing waits long for its turn).
        self._lease = timedelta(seconds=2 * total + 5)
        self._session: aiohttp.ClientSession | None = None
        self._to_record: list[tuple[asyncpg.Record, Attempt, str, float, asyncio.Future[None]]] = []
        self._recorder: asyncio.Task[None] | None = None

    async def __aenter__(self) -> DeliverySender:
        connector = aiohttp.TCPConnector(
            resolver=GuardedResolver(allow_private=self._settings.webhook_allow_private), limit=100
        )
        self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    @property
    def per_subscription(self) -> int:
        return self._per_subscription

    async def claim(self, limit: int = BATCH, busy: Sequence[int] = ()) -> list[asyncpg.Record]:
        """Claim up to `limit` due deliveries (committed: their attempt is counted and their lease
        set before anything is sent), none of the subscriptions in `busy`."""
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(_RELAXED)
            return await conn.fetch(_CLAIM, limit, self._lease, self._per_subscription, list(busy))

    async def release(self, rows: Sequence[asyncpg.Record]) -> None:
        """Claimed deliveries that will not be sent by this instance: due again at once."""
        if rows:
            await self._pool.execute(
                _RELEASE,
                [r["subscription_id"] for r in rows],
                [r["id"] for r in rows],
                [r["lease"] for r in rows],
            )

    async def run_once(self, batch: int = BATCH) -> Round:
        """Claim up to `batch` due deliveries, send them, record each outcome."""
        claimed = await self.claim(batch)
        outcomes = await asyncio.gather(*(self.deliver(row) for row in claimed))
        return Round(
            claimed=len(claimed),
            delivered=outcomes.count("delivered"),
            retried=outcomes.count("retried"),
            dead=outcomes.count("dead"),
        )

    async def deliver(self, row: asyncpg.Record) -> str:
        """Send one claimed delivery and record its outcome: "delivered", "retried" or "dead"."""
        limit = self._limits.setdefault(row["subscription_id"], asyncio.Semaphore(self._per_subscription))
        # The slot is held until the outcome is committed, not only while sending: a delivery
        # is in flight until then (a crash sends it again), so a subscription never has more
        # than its limit sent and unrecorded, which bounds the duplicates a crash can cause.
        async with limit:
            attempt = await self._send(row)
            outcome = await self._record(row, attempt)
        if self._metrics is not None:
            self._metrics.webhook_deliveries.labels(outcome).inc()
            if outcome == "delivered":
                self._metrics.webhook_delivery_seconds.observe(_since_event(row))
        return outcome

    def _decide(self, row: asyncpg.Record, attempt: Attempt) -> tuple[str, float]:
        """The outcome ("delivered", "retried", "dead") and, when retried, the delay in seconds."""
        if attempt.status is not None and 200 <= attempt.status < 300:
            return "delivered", 0.0
        if attempt.status == 410:
            return "dead", 0.0
        delay = attempt.retry_after if attempt.retry_after is not None else backoff(row["attempts"])
        window = self._settings.webhook_retry.total_seconds()
        if (datetime.now(UTC) - row["created_at"]).total_seconds() + delay > window:
            return "dead", 0.0
        return "retried", delay

    async def _record(self, row: asyncpg.Record, attempt: Attempt) -> str:
        """Record the outcome, in one transaction with every other outcome that came meanwhile
        (group commit: a burst of answers is one statement, not one commit each); returns once
        it is committed, or raises what the database raised."""
        outcome, delay = self._decide(row, attempt)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._to_record.append((row, attempt, outcome, delay, done))
        if self._recorder is None or self._recorder.done():
            self._recorder = asyncio.create_task(self._record_queued(), name="webhook-record")
        await done
        return outcome

    async def _record_queued(self) -> None:
        while self._to_record:
            batch, self._to_record = self._to_record[:RECORD_BATCH], self._to_record[RECORD_BATCH:]
            try:
                async with self._pool.acquire() as conn, conn.transaction():
                    await conn.execute(_RELAXED)
                    await conn.execute(
                        _RECORD,
                        [r["subscription_id"] for r, *_ in batch],
                        [r["id"] for r, *_ in batch],
                        [r["lease"] for r, *_ in batch],
                        ["pending" if o == "retried" else o for _, _, o, _, _ in batch],
                        [d for *_, d, _ in batch],
                        [a.status for _, a, *_ in batch],
                        [a.error for _, a, *_ in batch],
                    )
                    gone = sorted({r["subscription_id"] for r, a, *_ in batch if a.status == 410})
                    if gone:
                        await conn.execute(_GONE, gone)
            except BaseException as exc:
                for *_, done in batch:
                    if not done.done():
                        done.set_exception(exc if isinstance(exc, Exception) else asyncio.CancelledError())
                if not isinstance(exc, Exception):
                    raise
            else:
                for *_, done in batch:
                    if not done.done():
                        done.set_result(None)

    async def ping(self, url: str, secret: str) -> Attempt:
        """One signed `webhook.ping` message to `url`, through the same guards, not recorded."""
        now = datetime.now(UTC)
        body = {"id": None, "type": "webhook.ping", "occurred_at": now.isoformat(), "payload": {}}
        return await self._post(url, secret, f"ping_{secrets.token_hex(8)}", body)

    async def _send(self, row: asyncpg.Record) -> Attempt:
        return await self._post(row["url"], row["secret"], f"evt_{row['event_id']}", row["event"])

    async def _post(self, url: str, secret: str, msg_id: str, event: object) -> Attempt:
        assert self._session is not None, "use DeliverySender as an async context manager"
        try:
            host, _ = check_form(url)
        except UrlRefused as exc:
            return Attempt(None, str(exc))
        if literal_refused(host, allow_private=self._settings.webhook_allow_private):
            return Attempt(None, f"{host} is an address webhooks may not reach")
        body = msgspec.json.encode(event).decode()
        now = datetime.now(UTC)
        headers = signed_headers(secret, msg_id, body, now)
        started = time.monotonic()
        try:
            async with self._session.post(
                url, data=body.encode(), headers=headers, allow_redirects=False
            ) as response:
                # Text the database can store whatever the receiver sent: no U+0000 (one such
                # answer would otherwise fail the outcome statement of every delivery with it).
                kept = (
                    (await response.content.read(KEPT_BYTES))
                    .decode(errors="replace")
                    .replace("\x00", "\ufffd")
                )
                wait = None
                if response.status in (429, 503):
                    wait = retry_after(response.headers.get("Retry-After"), now)
                error = None if 200 <= response.status < 300 else (kept or f"HTTP {response.status}")
                return Attempt(response.status, error, wait)
        except aiohttp.ClientConnectorDNSError:
            # Resolution failed, or every address was refused by GuardedResolver.
            return Attempt(None, f"{host} does not resolve to an address webhooks may reach")
        except TimeoutError:
            return Attempt(None, f"timed out after {time.monotonic() - started:.1f} s")
        except (aiohttp.ClientError, OSError) as exc:
            return Attempt(None, f"connection failed: {type(exc).__name__}: {str(exc)[:200]}")
