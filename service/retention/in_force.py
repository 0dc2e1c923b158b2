"""The retention windows in force, for validating timestamps: each table's window as
`retention_policies` holds it (what `telemetry retention set` changes, in both storage modes),
kept in memory by each service instance and re-read every few seconds.

A write older than its table's window would be dropped by the next retention run or, in postgres
mode, finds no partition at all; validation refuses it at once (422 naming the field) against
the window in force, never against the configured default (`Settings.retention`), which only
seeds `retention_policies` when the migrations create it.

Guarantees:
* Bounded staleness: `window()` answers from the windows read last; they are re-read every
  `max_age` seconds (default 5), each read given at most `read_timeout` seconds (default 2). So
  a window changed on any instance, or by the CLI, is applied by every instance within
  `max_age + read_timeout` seconds, as long as the database answers the re-read.
* `start()` reads them once before the app serves (so validation starts from the windows in
  force, not the configured ones), then re-reads in the background until `stop()`.
* Reading never fails a request and never delays one: `window()` is a lookup, with no database
  round trip. When a re-read fails or times out, the windows last read stay in use (before the
  first read: the configured ones) until one succeeds; the log says when re-reading starts
  failing and when it works again, not at every attempt. A row let through meanwhile by a
  window that was shortened is still refused alone by the writer when its partition is gone
  (`service.ingest.writer`), or stored until the next retention run drops it.

Why a timed re-read rather than LISTEN/NOTIFY: a listener needs a connection of its own outside
the pool (pooled connections keep no session state), with reconnect handling, and notifications
sent while it was disconnected are lost, so it would need a periodic re-read anyway. Windows
change by an operator's command, rarely; one read of a table of ten rows every few seconds per
instance costs nothing, and its bound holds whichever instance or tool made the change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta

import asyncpg

from service.db.errors import STATEMENT_FAILED
from service.retention.policies import stored_windows
from service.settings import RetentionWindows

log = logging.getLogger(__name__)


class WindowsInForce:
    def __init__(
        self,
        pool: asyncpg.Pool,
        configured: RetentionWindows,
        *,
        max_age: float = 5.0,
        read_timeout: float = 2.0,
    ) -> None:
        if max_age <= 0 or read_timeout <= 0:
            raise ValueError("max_age and read_timeout are expected to be greater than zero")
        self.pool = pool
        self.max_age = max_age
        self.read_timeout = read_timeout
        self._configured = configured.as_dict()
        self._windows = dict(self._configured)
        self._failing = False
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def window(self, table: str) -> timedelta:
        """`table`'s window in force (a table of `retention_policies` or of `RetentionWindows`);
        raises KeyError for any other name."""
        return self._windows[table]

    async def start(self) -> None:
        if self._task is not None:
            raise RuntimeError("the windows are already being re-read")
        await self.refresh()
        self._task = asyncio.create_task(self._reread(), name="retention-windows")

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)

    async def _reread(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=self.max_age)
            if not self._stop.is_set():
                await self.refresh()

    async def refresh(self) -> bool:
        """Re-read the windows now; whether that worked (if not, the ones in use stay)."""
        try:
            async with asyncio.timeout(self.read_timeout):
                stored = await stored_windows(self.pool)
        except (*STATEMENT_FAILED, OSError, TimeoutError) as exc:
            if not self._failing:
                log.warning("cannot read the retention windows (%r); validating with the last ones read", exc)
                self._failing = True
            return False
        if self._failing:
            log.warning("retention windows read again")
            self._failing = False
        # A table without a row (only possible by hand) reads as configured, as `read_policy` does.
        self._windows = {**self._configured, **stored}
        return True
