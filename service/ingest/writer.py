"""The group-commit writer: bounded queue → batch → COPY → one commit → wake the waiters.

States: `created` → `running` (after `start`) → `draining` (after `stop` begins) → `stopped`.

Guarantees:
* A `submit_*` call returns only after its rows are committed (or found already stored: a
  heartbeat absorbed by its bucket, a dispatch whose `request_id` exists; or, for a command
  ack, found not to move its command forward). Rows of many
  requests share one transaction: each kind's `Merge` (`ingest/merges.py`) stages its rows
  with one binary COPY and stores them with one set-based `INSERT … ON CONFLICT`, kinds
  always in the same order, then one COMMIT.
* Presence (`device_presence`) of the devices whose heartbeats a batch holds is updated in the
  batch's own transaction by one set-based statement, rows locked in `device_id` order, only
  forward (`statements.UPDATE_PRESENCE`): a committed heartbeat is never missing from presence.
* A batch starts when `batch_max_rows` rows wait or `batch_window` after its first row arrived,
  whichever is first; `flushers` batches may be in flight at once.
* The queue holds at most `queue_max_rows` rows: past that, `submit_*` raises `QueueFull`
  at once (the API answers 503 with Retry-After), so memory stays bounded.
* Every flush attempt is tracked by `watchdog`, so a stalled database (or a held lock) is
  seen by the API, which then refuses requests at once instead of queueing them behind it.
* A caller waits at most `ack_timeout` seconds for its commit; past that it gets
  `CommitUnconfirmed` (its rows may still be committed later: never a 2xx without a commit,
  but an error does not prove the rows are absent, so retries must be idempotent).
* A transient failure (connection lost, server restarting, deadlock victim) makes the writer
  retry the whole batch on a fresh connection with exponential backoff, up to
  `retry_attempts` times; the statements are idempotent, so a batch whose COMMIT outcome was
  unknown can be re-run without storing anything twice. When retries are exhausted every
  request of the batch gets `WriteFailed`, never a success.
* One request never fails another: any other failure of a flush (a row the database refuses,
  a value the client cannot encode such as an int past bigint, any exception at all) is
  isolated by bisection: the batch is split in halves, each re-run in its own transaction,
  recursively, so a single bad request among N costs O(log N) extra transactions. Only the
  request that causes it gets `WriteFailed(transient=False)`, with a generic message and its
  `request_id`; the exception itself is logged under that id. Every other request commits
  and gets its result.
* The constructor checks its arguments, as asyncpg's `Pool` does: a value out of range raises
  `ValueError` naming the argument, before anything runs.
* `stop()` refuses new submissions (`WriterClosed`), flushes everything already queued, then
  returns. It does not cut in-flight flushes short.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

import asyncpg

from service.db.errors import is_transient
from service.db.watchdog import DatabaseWatchdog
from service.ingest import merges, statements
from service.ingest.merges import Merge
from service.ingest.rows import AckOutcome, AckRow, DispatchOutcome, DispatchRow, DownloadRow, HeartbeatRow
from service.metrics import Metrics
from service.settings import PresencePolicy

log = logging.getLogger(__name__)

RowT = TypeVar("RowT", bound=tuple[object, ...])
ResultT = TypeVar("ResultT")

# What callers are told: never the exception's text (it may quote SQL or other rows).
REFUSED = "the rows could not be stored; nothing was stored for this request"
UNAVAILABLE = "the database is unavailable; nothing was stored"


class WriterState(enum.Enum):
    CREATED = "created"
    RUNNING = "running"
    DRAINING = "draining"
    STOPPED = "stopped"


class WriterError(Exception):
    """Base of the writer's errors; none of them means rows were committed."""


class QueueFull(WriterError):
    pass


class WriterClosed(WriterError):
    pass


class CommitUnconfirmed(WriterError):
    """The caller's rows were not committed within `ack_timeout`; they may be later."""


class WriteFailed(WriterError):
    """The rows could not be committed; `transient` says whether retrying later may work.

    The message is generic (never the underlying exception's text); `request_id` names the
    request in the log line that holds the cause."""

    def __init__(self, message: str, *, transient: bool, request_id: str | None = None) -> None:
        super().__init__(message)
        self.transient = transient
        self.request_id = request_id


@dataclass(eq=False)
class _Request:
    merge: Merge[Any, Any]
    rows: Sequence[tuple[object, ...]]
    future: asyncio.Future[Any]
    request_id: str
    enqueued_at: float = field(default_factory=time.monotonic)


@dataclass
class GroupCommitWriter:
    pool: asyncpg.Pool
    metrics: Metrics
    batch_window: timedelta = timedelta(milliseconds=5)
    batch_max_rows: int = 5000
    queue_max_rows: int = 20_000
    bucket_seconds: int = 10
    retry_attempts: int = 5
    retry_base_delay: float = 0.05
    retry_max_delay: float = 2.0
    flushers: int = 2
    ack_timeout: float = 10.0
    watchdog: DatabaseWatchdog = field(default_factory=DatabaseWatchdog)
    presence: PresencePolicy = field(default_factory=PresencePolicy)
    # The time presence is judged at, instead of the database's clock (tests).
    presence_clock: Callable[[], datetime] | None = None

    def __post_init__(self) -> None:
        _check_positive("batch_window", self.batch_window.total_seconds())
        _check_at_least("batch_max_rows", self.batch_max_rows, 1)
        _check_at_least("queue_max_rows", self.queue_max_rows, 1)
        _check_at_least("bucket_seconds", self.bucket_seconds, 1)
        _check_at_least("retry_attempts", self.retry_attempts, 1)
        _check_at_least("retry_base_delay", self.retry_base_delay, 0)
        _check_at_least("retry_max_delay", self.retry_max_delay, self.retry_base_delay)
        _check_at_least("flushers", self.flushers, 1)
        _check_positive("ack_timeout", self.ack_timeout)
        # The order every transaction takes the kinds in, so that two flushes never wait on
        # each other's rows in opposite orders.
        self._merges: tuple[Merge[Any, Any], ...] = (
            merges.heartbeats(self.bucket_seconds, self.presence, self.presence_clock),
            merges.DISPATCHES,
            merges.DOWNLOADS,
            merges.ACKS,
        )
        self.state = WriterState.CREATED
        self._queue: deque[_Request] = deque()
        self._queued_rows = 0
        self._wakeup = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        if self.state is not WriterState.CREATED:
            raise RuntimeError(f"writer cannot start from state {self.state.value}")
        self.state = WriterState.RUNNING
        self._tasks = [
            asyncio.create_task(self._flush_loop(), name=f"group-commit-flusher-{i}")
            for i in range(self.flushers)
        ]

    async def stop(self) -> None:
        """Refuse new writes, commit everything queued, stop the flushers."""
        if self.state in (WriterState.CREATED, WriterState.STOPPED):
            self.state = WriterState.STOPPED
            return
        self.state = WriterState.DRAINING
        self._wakeup.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.state = WriterState.STOPPED
        log.info("writer stopped; queue drained")

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    # -- submission ----------------------------------------------------------------------------

    def ensure_capacity(self, rows: int = 1) -> None:
        """Raise `WriterClosed` or `QueueFull` now if `rows` more rows would be refused.

        Handlers call it before reading and validating a body, so that an overloaded instance
        answers 503 without spending CPU on work it will throw away."""
        if self.state is not WriterState.RUNNING:
            self.metrics.rejected_writes.labels("closed").inc()
            raise WriterClosed("the writer is shutting down")
        if self._queued_rows + rows > self.queue_max_rows and self._queued_rows > 0:
            self.metrics.rejected_writes.labels("queue_full").inc()
            raise QueueFull(f"write queue full ({self._queued_rows} rows waiting)")

    async def _submit(
        self, merge: Merge[RowT, ResultT], rows: Sequence[RowT], request_id: str | None
    ) -> list[ResultT]:
        self.ensure_capacity(len(rows))
        request = _Request(
            merge, rows, asyncio.get_running_loop().create_future(), request_id or uuid.uuid4().hex
        )
        # Mark the outcome as seen even when the caller has gone (no "never retrieved" noise).
        request.future.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._queue.append(request)
        self._queued_rows += len(rows)
        self.metrics.queue_rows.set(self._queued_rows)
        self._wakeup.set()
        # The flush goes on even if this caller is cancelled (client went away) or times out.
        try:
            results: list[ResultT] = await asyncio.wait_for(asyncio.shield(request.future), self.ack_timeout)
            return results
        except TimeoutError:
            self.metrics.failed_writes.labels("unconfirmed").inc()
            raise CommitUnconfirmed(
                f"commit not confirmed within {self.ack_timeout:g}s; the rows may still be stored"
            ) from None

    async def submit_heartbeats(
        self, rows: Sequence[HeartbeatRow], *, request_id: str | None = None
    ) -> list[bool]:
        """Returns stored (True) or absorbed by the device's bucket (False), per row."""
        return await self._submit(self._merges[0], rows, request_id)

    async def submit_dispatches(
        self, rows: Sequence[DispatchRow], *, request_id: str | None = None
    ) -> list[DispatchOutcome]:
        """Returns per row whether it created the dispatch, and the dispatch stored under its
        request_id."""
        return await self._submit(self._merges[1], rows, request_id)

    async def submit_downloads(
        self, rows: Sequence[DownloadRow], *, request_id: str | None = None
    ) -> list[bool]:
        """Rows with ids chosen by the caller; returns stored (True) or already there under the
        same (id, ts) (False), per row.

        Every `submit_*` takes the caller's `request_id` (default: a new one), which a
        `WriteFailed` carries and the log line about its cause names."""
        return await self._submit(self._merges[2], rows, request_id)

    async def submit_acks(self, rows: Sequence[AckRow], *, request_id: str | None = None) -> list[AckOutcome]:
        """Devices' command acks; returns per row what it did to its command (moved it forward,
        repeated, contradicted, or found no command of that device) and the command's state."""
        return await self._submit(self._merges[3], rows, request_id)

    # -- flushing ------------------------------------------------------------------------------

    async def _next_batch(self) -> list[_Request] | None:
        """Wait for a batch: None once draining and empty."""
        while True:
            while not self._queue:
                if self.state is not WriterState.RUNNING:
                    return None
                self._wakeup.clear()
                await self._wakeup.wait()
            await self._wait_for_window()
            batch: list[_Request] = []
            rows = 0
            while self._queue and (not batch or rows + len(self._queue[0].rows) <= self.batch_max_rows):
                request = self._queue.popleft()
                batch.append(request)
                rows += len(request.rows)
            if batch:  # else another flusher took the queue while this one waited
                self._queued_rows -= rows
                self.metrics.queue_rows.set(self._queued_rows)
                return batch

    async def _wait_for_window(self) -> None:
        """Until the oldest request's window closes, the batch is full, or the writer drains."""
        deadline = self._queue[0].enqueued_at + self.batch_window.total_seconds()
        while (
            self.state is WriterState.RUNNING
            and self._queued_rows < self.batch_max_rows
            and (remaining := deadline - time.monotonic()) > 0
        ):
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), remaining)

    async def _flush_loop(self) -> None:
        while True:
            batch = await self._next_batch()
            if batch is None:
                return
            try:
                await self._flush(batch)
            except Exception:  # never let a flusher die with waiters pending
                log.exception(
                    "unexpected flush failure; failing requests %s", ", ".join(r.request_id for r in batch)
                )
                for request in batch:
                    refused = WriteFailed(REFUSED, transient=False, request_id=request.request_id)
                    self._fail([request], refused)

    async def _flush(self, batch: list[_Request]) -> None:
        """Commit `batch`, or isolate the request(s) that make it fail by bisection."""
        started = time.monotonic()
        try:
            results = await self._with_retries(batch)
        except WriteFailed as exc:  # transient, retries exhausted: nobody's rows can commit now
            self._fail(batch, exc)
            return
        except Exception as exc:
            if len(batch) == 1:
                self._refuse(batch[0], exc)
                return
            # Some request's rows cannot be written: re-run each half in its own transaction.
            half = len(batch) // 2
            await self._flush(batch[:half])
            await self._flush(batch[half:])
            return
        self.metrics.flush_seconds.observe(time.monotonic() - started)
        self.metrics.batch_rows.observe(sum(len(r.rows) for r in batch))
        for request, result in zip(batch, results, strict=True):
            if not request.future.done():
                request.future.set_result(result)

    def _refuse(self, request: _Request, exc: Exception) -> None:
        """`request` alone fails `exc`: log the cause under its id, answer it generically."""
        log.error(
            "request %s: %d %s row(s) refused; nothing stored for it",
            request.request_id,
            len(request.rows),
            request.merge.kind,
            exc_info=exc,
        )
        self._fail([request], WriteFailed(REFUSED, transient=False, request_id=request.request_id))

    def _fail(self, batch: list[_Request], exc: WriteFailed) -> None:
        for request in batch:
            self.metrics.failed_writes.labels("unavailable" if exc.transient else "rejected").inc()
            if not request.future.done():
                request.future.set_exception(exc)

    async def _with_retries(self, batch: list[_Request]) -> list[Any]:
        """The batch's results, retrying transient failures; raises `WriteFailed(transient=True)`
        once retries are exhausted, and any other exception as it is (the rows' fault)."""
        delay = self.retry_base_delay
        for attempt in range(1, self.retry_attempts + 1):
            try:
                with self.watchdog.track():  # each attempt, not the backoff between them
                    async with self.pool.acquire() as conn:
                        return await self._commit(conn, batch)
            except Exception as exc:
                if not is_transient(exc):
                    if isinstance(exc, asyncpg.PostgresError) and statements.is_missing_partition(exc):
                        await self._create_missing_partitions()
                        continue
                    raise
                if attempt == self.retry_attempts:
                    log.error("flush failed %d times; last error: %r", attempt, exc)
                    raise WriteFailed(UNAVAILABLE, transient=True) from exc
                self.metrics.flush_retries.inc()
                log.warning(
                    "flush attempt %d failed (%s); retrying in %.2fs", attempt, type(exc).__name__, delay
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.retry_max_delay)
        raise WriteFailed(UNAVAILABLE, transient=True)

    async def _create_missing_partitions(self) -> None:
        log.warning("insert found no partition; creating partitions now")
        async with self.pool.acquire() as conn:
            await conn.execute(statements.ENSURE_PARTITIONS_NOW)

    async def _commit(self, conn: asyncpg.Connection, batch: list[_Request]) -> list[Any]:
        """Stage and merge every kind of the batch in one transaction; per-request results."""
        results: list[Any] = [None] * len(batch)
        written: list[tuple[str, int, int]] = []
        async with conn.transaction():
            for merge in self._merges:
                indexes = [i for i, request in enumerate(batch) if request.merge is merge]
                if not indexes:
                    continue
                per_request, stored = await merge.merge(conn, [batch[i].rows for i in indexes])
                rows = 0
                for index, request_results in zip(indexes, per_request, strict=True):
                    results[index] = request_results
                    rows += len(request_results)
                written.append((merge.table, stored, rows - stored))
        for table, stored, absorbed in written:
            self.metrics.rows_written.labels(table).inc(stored)
            if absorbed:
                self.metrics.rows_absorbed.labels(table).inc(absorbed)
        return results


def _check_at_least(name: str, value: float, least: float) -> None:
    if value < least:
        raise ValueError(f"{name} is expected to be greater than or equal to {least:g}, got {value!r}")


def _check_positive(name: str, value: float) -> None:
    if value <= 0:
        raise ValueError(f"{name} is expected to be greater than zero, got {value!r}")
