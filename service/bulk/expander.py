"""Every instance's bulk expander: creates the commands of bulk dispatches, chunk by chunk.

* Claims through the database: each chunk locks its bulk's row (`FOR UPDATE SKIP LOCKED`), so
  N instances never create one chunk twice, and a bulk another instance is expanding is
  skipped rather than waited for.
* Woken at once by a bulk this instance created (`wake`), polls every `POLL` seconds otherwise
  (another instance's bulk, or one left half-created by a crash: it resumes after its last
  committed chunk).
* Yields to the event loop between chunks, and each chunk is one bounded transaction
  (`service.bulk.dispatches.CHUNK` targets), so heartbeats keep flowing while 100,000 commands
  are created; each chunk that queued pushes wakes this instance's push worker (`on_created`).
* A failed chunk (database away, a bug) is logged and retried after `ERROR_PAUSE`: its
  transaction rolled back, nothing of it is kept; nothing ends the loop but `stop`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import timedelta

import asyncpg

from service.bulk.dispatches import expand_chunk
from service.db.errors import round_failed

log = logging.getLogger(__name__)

POLL = 1.0
ERROR_PAUSE = 1.0


class BulkExpander:
    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        push_ttl: timedelta | None,
        on_created: Callable[[], None] | None = None,
    ) -> None:
        self._pool = pool
        self._push_ttl = push_ttl
        self._on_created = on_created
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def wake(self) -> None:
        """A bulk was created in this instance: expand it now rather than at the next poll."""
        self._wake.set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="bulk-expander")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def expand_all(self) -> int:
        """Expand chunks until no bulk is left to expand here; the targets done."""
        done = 0
        while True:
            async with self._pool.acquire() as conn:
                started = time.monotonic()
                chunk = await expand_chunk(conn, push_ttl=self._push_ttl)
            if chunk is None:
                return done
            done += chunk.targets
            if chunk.targets and self._on_created is not None:
                self._on_created()
            if chunk.done:
                log.info("bulk %s: every command created", chunk.bulk_id)
            took = time.monotonic() - started
            log.debug("bulk %s: %s commands in %.3f s", chunk.bulk_id, chunk.targets, took)
            await asyncio.sleep(0)  # let the requests in between chunks

    async def _loop(self) -> None:
        while True:
            self._wake.clear()  # a wake from now on is seen after this round
            try:
                await self.expand_all()
            except Exception as exc:  # logged, retried: the loop must not die
                await round_failed(log, "bulk expansion", exc, ERROR_PAUSE)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), POLL)
