"""Whether the database is making progress: every database call on a request's path (a flush
attempt, a credential lookup) is tracked while it runs, and `stalled_for()` is how long calls
have been waiting with none finishing: the time since the later of the oldest running call's
start and the last call's end (0 when none runs).

A stalled server (stopped, blocked on a lock) shows up here within `stall_after` seconds
whichever call hit it first, so the API can refuse requests at once instead of letting them
pile up behind it. A busy server is not stalled: calls waiting for a pool connection or on
each other's locks still see others finish. A server that refuses connections is not stalled
either: its calls fail fast and are answered as unavailable."""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass, field


class DatabaseStalled(Exception):
    """Database calls have been waiting, none finishing, for longer than `stall_after`."""


@dataclass
class DatabaseWatchdog:
    stall_after: float = 2.0
    _running: dict[int, float] = field(default_factory=dict)
    _last_finished: float = field(default_factory=time.monotonic)
    _ids: Iterator[int] = field(default_factory=itertools.count)

    @contextlib.contextmanager
    def track(self) -> Iterator[None]:
        key = next(self._ids)
        self._running[key] = time.monotonic()
        try:
            yield
        finally:
            del self._running[key]
            self._last_finished = time.monotonic()

    def stalled_for(self) -> float:
        """Seconds calls have been waiting with none finishing (0 when none is running)."""
        # Keys grow with start time and dicts keep insertion order: the first entry is the
        # oldest running call (O(1) on every request, however many are in flight).
        oldest = next(iter(self._running.values()), None)
        if oldest is None:
            return 0.0
        return time.monotonic() - max(oldest, self._last_finished)

    @property
    def stalled(self) -> bool:
        return self.stalled_for() > self.stall_after

    def ensure_responsive(self) -> None:
        """Raise `DatabaseStalled` when calls have been waiting, none finishing, for longer
        than `stall_after`."""
        stalled = self.stalled_for()
        if stalled > self.stall_after:
            raise DatabaseStalled(f"database calls have been waiting for {stalled:.1f}s with none finishing")
