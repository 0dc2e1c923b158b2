"""How long the database has kept us waiting: every database call on a request's path (a flush,
a credential lookup) is tracked while it runs, and `stalled_for()` is the age of the oldest one.

A stalled server (stopped, restarting, blocked on a lock) shows up here within `stall_after`
seconds whichever call hit it first, so the API can refuse new writes at once instead of
letting them pile up behind it."""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass, field


class DatabaseStalled(Exception):
    """A database call has been waiting for longer than the watchdog's `stall_after`."""


@dataclass
class DatabaseWatchdog:
    stall_after: float = 2.0
    _running: dict[int, float] = field(default_factory=dict)
    _ids: Iterator[int] = field(default_factory=itertools.count)

    @contextlib.contextmanager
    def track(self) -> Iterator[None]:
        key = next(self._ids)
        self._running[key] = time.monotonic()
        try:
            yield
        finally:
            del self._running[key]

    def stalled_for(self) -> float:
        """Seconds the oldest database call in progress has been running (0 when none is)."""
        if not self._running:
            return 0.0
        return time.monotonic() - min(self._running.values())

    @property
    def stalled(self) -> bool:
        return self.stalled_for() > self.stall_after

    def ensure_responsive(self) -> None:
        """Raise `DatabaseStalled` when a call has been waiting for longer than `stall_after`."""
        stalled = self.stalled_for()
        if stalled > self.stall_after:
            raise DatabaseStalled(f"a database call has been waiting for {stalled:.1f}s")
