"""Slows down guessing: after `limit` failures from one client within `window` seconds, that
client is refused (429 with Retry-After) until the window has passed. In memory, per instance.

Guarantees:
- A parallel burst cannot outrun the count: `reserve` lets an attempt go ahead only while the
  client's recent failures plus its attempts still in flight stay under `limit`, so even if
  every attempt in flight fails, at most `limit` failures get through. The decision and the
  count are one step (no await between them).
- Good traffic is not refused for being parallel: an attempt that would take failures plus
  attempts in flight past the limit waits (at most `max_wait` seconds) for one in flight to
  finish, instead of being refused; a fleet enrolling at once from one address (NAT, a proxy)
  goes through `limit` at a time. Only recorded failures refuse at once.
- Every reserved attempt ends with exactly one `release` (not a failure) or `fail` (a failure,
  counted for `window` seconds).
- Memory is bounded by `max_clients`: past it, the clients least recently seen are forgotten
  one at a time (never everyone at once, so a flood of addresses cannot wipe a guesser's record
  wholesale).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Attempt:
    """A reserved attempt; hand it back with `release` or `fail`."""

    client: str


@dataclass
class FailureThrottle:
    limit: int = 10
    window: float = 60.0
    max_clients: int = 100_000
    max_wait: float = 5.0
    # client → times of its failures inside the window; ordered least recently seen first
    _failures: OrderedDict[str, deque[float]] = field(default_factory=OrderedDict)
    _in_flight: dict[str, int] = field(default_factory=dict)
    # Set (and replaced) whenever an attempt ends: wakes the attempts waiting for room.
    _ended: asyncio.Event | None = None

    def _recent(self, client: str, now: float) -> int:
        failures = self._failures.get(client)
        if failures is None:
            return 0
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        if not failures:
            del self._failures[client]
            return 0
        return len(failures)

    def _wait_seconds(self, client: str, now: float) -> int:
        return max(1, int(self._failures[client][0] + self.window - now) + 1)

    def retry_after(self, client: str) -> int | None:
        """Seconds the client must wait, or None when it may try now (counts nothing)."""
        now = time.monotonic()
        if self._recent(client, now) < self.limit:
            return None
        return self._wait_seconds(client, now)

    def try_reserve(self, client: str) -> tuple[Attempt | None, int | None]:
        """One step, no waiting: `(attempt, None)` when it may go ahead, `(None, seconds)` when
        the client is over its limit of failures, `(None, None)` when it must wait for an
        attempt in flight to end."""
        now = time.monotonic()
        failed = self._recent(client, now)
        if failed >= self.limit:
            self._failures.move_to_end(client)
            return None, self._wait_seconds(client, now)
        if failed + self._in_flight.get(client, 0) >= self.limit:
            return None, None
        self._in_flight[client] = self._in_flight.get(client, 0) + 1
        return Attempt(client), None

    async def reserve(self, client: str) -> tuple[Attempt | None, int | None]:
        """`(attempt, None)` when the attempt may go ahead, `(None, seconds)` when refused:
        over the limit of failures, or still no room after `max_wait` (then `seconds` is 1)."""
        deadline = time.monotonic() + self.max_wait
        while True:
            attempt, wait = self.try_reserve(client)
            if attempt is not None or wait is not None:
                return attempt, wait
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None, 1
            if self._ended is None:
                self._ended = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ended.wait(), remaining)

    def release(self, attempt: Attempt) -> None:
        """The attempt was not a failure: it no longer counts."""
        self._end(attempt)

    def fail(self, attempt: Attempt) -> None:
        """The attempt was a failure: it counts for `window` seconds."""
        self._end(attempt)
        failures = self._failures.get(attempt.client)
        if failures is None:
            failures = self._failures[attempt.client] = deque()
            while len(self._failures) > self.max_clients:
                self._failures.popitem(last=False)
        else:
            self._failures.move_to_end(attempt.client)
        failures.append(time.monotonic())

    def _end(self, attempt: Attempt) -> None:
        left = self._in_flight.get(attempt.client, 0) - 1
        if left > 0:
            self._in_flight[attempt.client] = left
        else:
            self._in_flight.pop(attempt.client, None)
        if self._ended is not None:
            self._ended.set()
            self._ended = None

    def __len__(self) -> int:
        return len(self._failures)
