"""Sending a command's push through FCM HTTP v1, and what FCM's answer means.

`FcmSender.send` makes one attempt: `POST {endpoint}/v1/projects/{project_id}/messages:send`
with a bearer token from `AccessTokens`, and classifies the answer the way FCM documents its
error codes (the `google.firebase.fcm.v1.FcmError` detail's `errorCode`, else the HTTP status):

* sent: 200 with the message `name` (`projects/{id}/messages/{message id}`);
* retry: 429 `QUOTA_EXCEEDED`, 500 `INTERNAL`, 503 `UNAVAILABLE` and any other 5xx (after
  `Retry-After` when given, else exponential backoff); a 401 other than a third-party error (our
  access token was refused: it is dropped and a new one minted); a timeout, a refused or reset
  connection, an unreachable token endpoint (nothing says FCM saw it, and a repeated wake-up is
  harmless: the device pulls its commands once);
* final: 400 `INVALID_ARGUMENT`, 403 `SENDER_ID_MISMATCH`, 404 `UNREGISTERED`, 401
  `THIRD_PARTY_AUTH_ERROR` and any other 4xx: the same message can never succeed.

Only `UNREGISTERED` says the registration token is dead (`SendResult.unregistered`): a 404
without it (an unknown project) must not invalidate a device's token.

`FcmSender.deliver` repeats retryable attempts until one is sent or final, or until the
deadline (the command's expiry): the delay after attempt n is `base * 2**(n-1)` capped at
`cap`, scaled by a random 50-100 % so a fleet's retries do not arrive in step, and never
shorter than the `Retry-After` FCM asked for. An attempt whose delay would end past the
deadline is not made: the result is the last retryable one with `gave_up` set.

Bounded: at most `max_connections` HTTP/1.1 connections (keep-alive; `benchmarks/push.py`
measured this against HTTP/2 and chose it), each attempt at most `timeout` seconds (and never
past the deadline), at most 64 KB of an answer read.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import Any

import aiohttp
import msgspec

from service.push.credentials import AccessTokens, TokenUnavailable, load_service_account
from service.push.messages import CommandPush
from service.settings import Settings

DEFAULT_ENDPOINT = "https://fcm.googleapis.com"
MAX_ANSWER_BYTES = 64 * 1024
# Retry-After beyond an hour is treated as an hour: a command's TTL is usually a day, and a
# bogus header must not park a push past it.
MAX_RETRY_AFTER = 3600.0
FCM_ERROR_TYPE = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
FINAL_CODES = frozenset({"INVALID_ARGUMENT", "SENDER_ID_MISMATCH", "UNREGISTERED", "THIRD_PARTY_AUTH_ERROR"})


class Outcome(StrEnum):
    SENT = "sent"
    RETRY = "retry"
    FINAL = "final"


@dataclass(frozen=True, slots=True)
class SendResult:
    """What one attempt came to. `error` is FCM's `errorCode` (or its status, or `timeout`,
    `connection`, `token`), short enough for a `last_error` column; `retry_after` is FCM's
    requested delay in seconds when it gave one."""

    outcome: Outcome
    http_status: int | None = None
    message_name: str | None = None
    error: str | None = None
    retry_after: float | None = None
    attempts: int = 1
    gave_up: bool = False  # retryable, but the deadline came first

    @property
    def unregistered(self) -> bool:
        return self.error == "UNREGISTERED"


_answer = msgspec.json.Decoder()
_encode = msgspec.json.Encoder().encode


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """A `Retry-After` header (delta-seconds or an HTTP date) in seconds, held to [0, 1 h]."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if seconds != seconds:  # nan
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def _error_code(answer: Any) -> str | None:
    """The FcmError `errorCode` of an error answer, else its `status` (e.g. `UNAUTHENTICATED`)."""
    if not isinstance(answer, dict) or not isinstance(answer.get("error"), dict):
        return None
    error = answer["error"]
    details = error.get("details")
    if isinstance(details, list):
        for detail in details:
            if isinstance(detail, dict) and detail.get("@type") == FCM_ERROR_TYPE:
                code = detail.get("errorCode")
                if isinstance(code, str) and code:
                    return code[:64]
    status = error.get("status")
    return status[:64] if isinstance(status, str) and status else None


def classify(http_status: int, body: bytes, retry_after: str | None = None) -> SendResult:
    """FCM's answer to one `messages:send`, classified (see the module's table)."""
    try:
        answer = _answer.decode(body) if body else None
    except (msgspec.DecodeError, UnicodeDecodeError):
        answer = None
    if 200 <= http_status < 300:
        name = answer.get("name") if isinstance(answer, dict) else None
        return SendResult(Outcome.SENT, http_status, message_name=name if isinstance(name, str) else None)
    code = _error_code(answer)
    delay = retry_after_seconds(retry_after)
    if http_status == 429 or http_status >= 500:
        return SendResult(Outcome.RETRY, http_status, error=code or f"HTTP {http_status}", retry_after=delay)
    if http_status == 401 and code not in FINAL_CODES:
        return SendResult(Outcome.RETRY, http_status, error=code or "UNAUTHENTICATED", retry_after=delay)
    return SendResult(Outcome.FINAL, http_status, error=code or f"HTTP {http_status}")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with jitter; `Retry-After` is a floor."""

    base: float = 1.0
    cap: float = 60.0

    def delay(self, attempt: int, retry_after: float | None, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        backoff = min(self.cap, self.base * 2 ** min(attempt - 1, 30))
        jittered = backoff * (0.5 + 0.5 * (rng or random).random())
        return max(jittered, retry_after or 0.0)


async def _read_bounded(response: aiohttp.ClientResponse) -> bytes:
    """The answer's body, at most MAX_ANSWER_BYTES of it (`read(n)` returns what has arrived,
    which may be less than the whole body)."""
    body = bytearray()
    while len(body) < MAX_ANSWER_BYTES:
        chunk = await response.content.read(MAX_ANSWER_BYTES - len(body))
        if not chunk:
            break
        body += chunk
    return bytes(body)


class FcmSender:
    """Sends command pushes for one Firebase project over a bounded HTTP/1.1 pool.

    The sender owns its `aiohttp` session; `close()` ends it (and the token source's pool)."""

    def __init__(
        self,
        project_id: str,
        tokens: AccessTokens,
        *,
        endpoint: str = DEFAULT_ENDPOINT,
        max_connections: int = 64,
        timeout: float = 10.0,
        policy: RetryPolicy | None = None,
    ) -> None:
        self.project_id = project_id
        self._tokens = tokens
        self._url = f"{endpoint.rstrip('/')}/v1/projects/{project_id}/messages:send"
        self._timeout = timeout
        self.policy = policy or RetryPolicy()
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        # Made on first use, inside the running loop (aiohttp binds a session to its loop).
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self._max_connections, keepalive_timeout=60)
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    async def send(self, push: CommandPush, *, budget: float | None = None) -> SendResult:
        """One attempt, of at most `budget` seconds (and the sender's timeout); never raises
        for what FCM or the network answers."""
        try:
            token = await self._tokens.token()
        except TokenUnavailable:
            return SendResult(Outcome.RETRY, error="token")
        limit = self._timeout if budget is None else max(0.001, min(budget, self._timeout))
        try:
            async with self._client().post(
                self._url,
                data=_encode(push.body()),
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
                timeout=aiohttp.ClientTimeout(total=limit),
                allow_redirects=False,
            ) as response:
                body = await _read_bounded(response)
                result = classify(response.status, body, response.headers.get("Retry-After"))
        except TimeoutError:
            return SendResult(Outcome.RETRY, error="timeout")
        except (aiohttp.ClientError, OSError):
            return SendResult(Outcome.RETRY, error="connection")
        if result.http_status == 401 and result.outcome is Outcome.RETRY:
            self._tokens.invalidate(token)
        return result

    async def deliver(
        self, push: CommandPush, deadline: float, *, rng: random.Random | None = None
    ) -> SendResult:
        """Attempts until sent, final, or the next one would start at or past `deadline`
        (`time.monotonic()` seconds). `attempts` counts the attempts made."""
        attempt = 0
        while True:
            attempt += 1
            result = replace(await self.send(push, budget=deadline - time.monotonic()), attempts=attempt)
            if result.outcome is not Outcome.RETRY:
                return result
            # A refused token is replaced at once, the first time: it is not FCM being busy.
            delay = 0.0 if (result.http_status == 401 and attempt == 1) else None
            if delay is None:
                delay = self.policy.delay(attempt, result.retry_after, rng)
            if time.monotonic() + delay >= deadline:
                return replace(result, gave_up=True)
            await asyncio.sleep(delay)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        self._tokens.close()


def configured_sender(settings: Settings) -> FcmSender | None:
    """The sender `settings` configure, or None without a credentials file (pull only). Raises
    `SettingsError` naming TELEMETRY_FCM_CREDENTIALS_FILE if the file went bad since the settings
    were read. Makes no request: the first token is minted by the first send."""
    if settings.fcm_credentials_file is None:
        return None
    account = load_service_account(settings.fcm_credentials_file, settings.fcm_token_uri)
    return FcmSender(
        account.project_id,
        AccessTokens(account),
        endpoint=settings.fcm_endpoint,
        max_connections=settings.fcm_max_connections,
        timeout=settings.fcm_timeout.total_seconds(),
    )
