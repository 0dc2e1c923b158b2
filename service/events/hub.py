"""One poller per instance that tells the live streams when the feed has moved.

Wakeups by short polling, not LISTEN/NOTIFY: the feed's order already makes a committed event
wait for older transactions (`service.events.feed`), so a NOTIFY at commit could arrive
before the event is visible and a reader would have to poll anyway; and NOTIFY takes a
cluster-wide lock at commit (the notify queue), which every heartbeat flush would then
contend for. One `SELECT` of the feed's head every `interval` (200 ms) costs an index probe,
whatever the number of streams.

Guarantees:
* However many streams are open, the instance runs one query per `interval` (plus each
  stream's own page reads when something new is there); none when no stream is open (the
  poll task starts with the first subscriber and stops with the last).
* `wait(seen)` returns when the head has moved past `seen`, or after `at_most` seconds: a stream
  never misses a wakeup that happened between its read and its wait (it passes the head it
  read, not a flag).
* Nothing is buffered here: each stream reads its own pages (bounded by its page size), so a
  slow consumer costs only its own memory and connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg

from service.db.errors import CALL_FAILED
from service.events.feed import Cursor, last_event

log = logging.getLogger(__name__)

POLL_INTERVAL = 0.2


class EventHub:
    """`subscribe()` / `unsubscribe()` bracket a stream's life; `wait()` blocks until news."""

    def __init__(self, pool: asyncpg.Pool, interval: float = POLL_INTERVAL) -> None:
        self._pool = pool
        self._interval = interval
        self._head: Cursor | None = None
        self._moved = asyncio.Condition()
        self._subscribers = 0
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def subscribers(self) -> int:
        return self._subscribers

    def subscribe(self) -> None:
        self._subscribers += 1
        if self._task is None and not self._closing:
            self._task = asyncio.create_task(self._poll(), name="event-hub")

    async def unsubscribe(self) -> None:
        self._subscribers -= 1
        if self._subscribers == 0 and self._task is not None:
            task, self._task = self._task, None
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    @property
    def closing(self) -> bool:
        """Set by `close`: streams end (clients reconnect elsewhere with their cursor)."""
        return self._closing

    async def close(self) -> None:
        """Wake every waiting stream for good and stop polling (the app's shutdown calls it
        before waiting for in-flight requests, so open streams do not hold shutdown up)."""
        self._closing = True
        async with self._moved:
            self._moved.notify_all()
        if self._task is not None:
            task, self._task = self._task, None
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    @property
    def head(self) -> Cursor | None:
        """The newest visible event's cursor at the last poll (None before the first)."""
        return self._head

    async def wait(self, seen: Cursor | None, at_most: float) -> None:
        """Until the head differs from `seen`, or `at_most` seconds passed."""
        async with self._moved:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._moved.wait_for(lambda: self._closing or self._head != seen), at_most
                )

    async def _poll(self) -> None:
        while True:
            try:
                async with self._pool.acquire() as conn:
                    head = await last_event(conn)
            except CALL_FAILED as exc:
                # The database is away: streams keep their cursors and are woken when it is back.
                log.warning("event hub poll failed: %s: %s", type(exc).__name__, exc)
            except Exception:
                # A bug: logged with its traceback, and the poll goes on (it must never end).
                log.exception("event hub poll failed")
            else:
                if head != self._head:
                    async with self._moved:
                        self._head = head
                        self._moved.notify_all()
            await asyncio.sleep(self._interval)
