"""A database outage in the log: one line when it starts, one when it ends, none per request.

While the database is unavailable (`service.db.errors.Failure.UNAVAILABLE`: out of disk space,
out of connection slots, shutting down, unreachable, …) every request that reaches it fails the
same way; a line per request would bury everything else in the log. `OutageLog` keeps the state
(the condition in force, since when, how many attempts failed) and logs only its changes:

* `failed(exc)`: an ERROR line when the database was available, and again when the condition
  changes (out of disk space → shutting down); nothing while it stays the same.
* `succeeded()`: a WARNING line ("recovered from …, after N s and M failed attempts") when an
  outage was in force; nothing otherwise.

A condition that comes and goes (a nearly full disk where some commits still fit) logs a pair of
lines per round trip between the states, never more lines than state changes.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from service.db.errors import describe


@dataclass
class OutageLog:
    what: str  # what the outage stops, for the log line: "writes"
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger(__name__))
    condition: str | None = field(default=None, init=False)  # None: available
    _since: float = field(default=0.0, init=False)
    _failures: int = field(default=0, init=False)

    def failed(self, exc: BaseException) -> None:
        condition = describe(exc)
        if self.condition is None:
            self._since, self._failures = time.monotonic(), 0
        self._failures += 1
        if condition != self.condition:
            self.logger.error(
                "database %s: %s answered 503 with Retry-After until it clears", condition, self.what
            )
            self.condition = condition

    def succeeded(self) -> None:
        if self.condition is None:
            return
        self.logger.warning(
            "database %s recovered from %s after %.1f s and %d failed attempts",
            self.what,
            self.condition,
            time.monotonic() - self._since,
            self._failures,
        )
        self.condition = None
