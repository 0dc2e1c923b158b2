"""Slows down guessing: after `limit` failures from one client within `window` seconds, that
client is refused (429 with Retry-After) until the window has passed. In memory, per instance."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field


@dataclass
class FailureThrottle:
    limit: int = 10
    window: float = 60.0
    max_clients: int = 100_000
    _failures: dict[str, deque[float]] = field(default_factory=dict)

    def _recent(self, client: str, now: float) -> deque[float]:
        failures = self._failures.get(client)
        if failures is None:
            return deque()
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        if not failures:
            del self._failures[client]
        return failures

    def retry_after(self, client: str) -> int | None:
        """Seconds the client must wait, or None when it may try now."""
        now = time.monotonic()
        failures = self._recent(client, now)
        if len(failures) < self.limit:
            return None
        return max(1, int(failures[0] + self.window - now) + 1)

    def failed(self, client: str) -> None:
        if len(self._failures) >= self.max_clients:
            self._failures.clear()  # bounded memory beats perfect memory under a flood
        self._failures.setdefault(client, deque()).append(time.monotonic())
