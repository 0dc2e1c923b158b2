"""Slows down guessing: after `limit` failures from one client within `window` seconds, that
client is refused (429 with Retry-After) until the window has passed. In memory, per instance.

Guarantees:
- The check and the count are one step: `reserve` either refuses or records an attempt before
  the caller awaits anything, so a parallel burst from one client gets at most `limit` attempts
  through; an attempt that turns out not to be a failure is handed back with `release`.
- Memory is bounded by `max_clients`: past it, the clients least recently seen are forgotten
  one at a time (never everyone at once, so a flood of addresses cannot wipe a guesser's record
  wholesale).
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field


@dataclass
class FailureThrottle:
    limit: int = 10
    window: float = 60.0
    max_clients: int = 100_000
    # client → times of its attempts inside the window; ordered least recently seen first
    _attempts: OrderedDict[str, deque[float]] = field(default_factory=OrderedDict)

    def _recent(self, client: str, now: float) -> deque[float] | None:
        attempts = self._attempts.get(client)
        if attempts is None:
            return None
        while attempts and attempts[0] <= now - self.window:
            attempts.popleft()
        if not attempts:
            del self._attempts[client]
            return None
        return attempts

    def retry_after(self, client: str) -> int | None:
        """Seconds the client must wait, or None when it may try now (counts nothing)."""
        now = time.monotonic()
        attempts = self._recent(client, now)
        if attempts is None or len(attempts) < self.limit:
            return None
        return max(1, int(attempts[0] + self.window - now) + 1)

    def reserve(self, client: str) -> tuple[float | None, int | None]:
        """Check and count in one step: `(stamp, None)` when the attempt may go ahead (it is
        counted as a failure until `release(client, stamp)`), `(None, seconds)` when refused."""
        now = time.monotonic()
        attempts = self._recent(client, now)
        if attempts is not None and len(attempts) >= self.limit:
            self._attempts.move_to_end(client)
            return None, max(1, int(attempts[0] + self.window - now) + 1)
        if attempts is None:
            attempts = self._attempts[client] = deque()
            while len(self._attempts) > self.max_clients:
                self._attempts.popitem(last=False)
        else:
            self._attempts.move_to_end(client)
        attempts.append(now)
        return now, None

    def release(self, client: str, stamp: float) -> None:
        """Hand back a reserved attempt that was not a failure."""
        attempts = self._attempts.get(client)
        if attempts is None:
            return
        try:
            attempts.remove(stamp)
        except ValueError:
            return
        if not attempts:
            del self._attempts[client]

    def __len__(self) -> int:
        return len(self._attempts)
