"""The group-commit writer: bounded queue → batch → COPY → one commit → wake the waiters.

States: `created` → `running` (after `start`) → `draining` (after `stop` begins) → `stopped`.

Guarantees:
* `submit(rows)` returns only after its rows are committed (or found already stored: a
  heartbeat absorbed by its bucket, a dispatch whose `request_id` exists; or, for a command
  ack, found not to move its command forward). The writer is given one `Merge` per kind of
  row (`Merge` and `Stage`, below; the service's are listed in `service.app.row_merges`) and hands
  each request to the merge of its rows' type, without knowing any kind. Rows of many
  requests share one transaction: each merge stages its rows with one binary COPY and stores
  them with one set-based `INSERT … ON CONFLICT`, kinds always in the order the merges were
  given, then one COMMIT.
* Whatever a merge does runs in the batch's own transaction. The heartbeat merge the service
  wires updates presence (`device_presence`) of the batch's devices there, by one set-based
  statement, rows locked in `device_id` order, only forward (`fleet.presence.UPDATE_PRESENCE`):
  a committed heartbeat is never missing from presence.
* A batch starts when `batch_max_rows` rows wait or `batch_window` after its first row arrived,
  whichever is first; `flushers` batches may be in flight at once.
* The queue holds at most `queue_max_rows` rows: past that, `submit` raises `QueueFull`
  at once (the API answers 503 with Retry-After), so memory stays bounded.
* Every flush attempt is tracked by `watchdog`, so a stalled database (or a held lock) is
  seen by the API, which then refuses requests at once instead of queueing them behind it.
* A caller waits at most `ack_timeout` seconds for its commit; past that it gets
  `CommitUnconfirmed` (its rows may still be committed later: never a 2xx without a commit,
  but an error does not prove the rows are absent, so retries must be idempotent).
* Failures are told apart by SQLSTATE class (`service.db.errors.classify`), never by message:
  - Unavailable (out of resources such as a full disk, too many connections or out of memory;
    a server shutting down or restarting; an I/O error; a lost connection) and aborted (deadlock
    or serialization victim): no row is at fault, so the whole batch is retried on a fresh
    connection with exponential backoff, up to `retry_attempts` attempts, and never split. The
    statements are idempotent, so a batch whose COMMIT outcome was unknown can be re-run without
    storing anything twice. When retries are exhausted every request of the batch gets
    `WriteFailed(transient=True)` (the API: 503 with Retry-After), never a success. An outage is
    logged when it starts and when it ends (`OutageLog`), not per attempt or per request, and
    the first batch that commits afterwards ends it: recovery needs no restart. Retried rather
    than failed fast because the same path then bridges what clears within the backoff (a
    restart, a failover, connection slots), a full disk costs only `retry_attempts` quickly
    failing attempts per batch (the bounded queue answers the rest 503 at once), and no
    separate probe is needed to see the database back.
  - A row without a partition (postgres mode, `is_missing_partition`): the partitions the
    windows in force call for are created once per batch, and the batch re-run; a row still
    without one (older than its window) is a row error like the next.
  - Anything else means some request's rows cannot be written, and one request never fails
    another: the batch is split in halves, each re-run in its own transaction, recursively, so
    a single bad request among N costs O(log N) extra transactions. Only the request that
    causes it fails; every other request commits and gets its result. The isolated request
    gets `WriteFailed(transient=False)` (422) when its rows' own data is at fault (SQLSTATE
    classes 22 and 23, a value the client-side encoder refuses), and `WriteFaulted` (500) for
    any other failure (a schema not at head, an internal error, a bug), which is not known to
    be the data's and must not tell a device to drop it. Either carries a generic message and
    the `request_id`; the exception itself is logged under that id.
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
import types
import typing
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Generic, Protocol, TypeVar

import asyncpg

from service.db.errors import Failure, classify, is_missing_partition
from service.db.outage import OutageLog
from service.db.time_series import coverage
from service.db.watchdog import DatabaseWatchdog
from service.metrics import Metrics

log = logging.getLogger(__name__)

RowT = TypeVar("RowT", bound=tuple[object, ...])
ResultT = TypeVar("ResultT")

# ---- What the writer runs: one merge per kind of row, storing the rows of several requests
# in one transaction. ----
#
# A kind of row is declared once, as a `NamedTuple` in the package whose lifecycle it feeds
# (`ingest.heartbeats`, `commands.dispatches`, `commands.acks`, `rollout.downloads`): its staging
# table, columns and COPY are derived from that type (`Stage`), and its `Merge` names the type, so
# the writer hands each request to the merge of its rows' type. The writer runs every merge it
# was given through the same steps in `_commit` (as telegraf's postgresql output writes every
# table through one loop), without knowing any of them: adding a kind is one row type and one
# merge, listed where the service is wired (`service.app.row_merges`).

# Staging column types by Python type; an `Annotated[int, "smallint"]` field says its own.
_SQL_TYPES: dict[object, str] = {
    str: "text",
    int: "bigint",
    bool: "boolean",
    float: "float8",
    datetime: "timestamptz",
    dict[str, Any]: "jsonb",
}


def _sql_type(hint: object) -> tuple[str, bool]:
    """(column type, nullable) of one field's type hint."""
    nullable = False
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        nullable = len(args) < len(typing.get_args(hint))
        (hint,) = args
    if typing.get_origin(hint) is typing.Annotated:
        base, *extras = typing.get_args(hint)
        declared = next((e for e in extras if isinstance(e, str)), None)
        if declared is not None:
            return declared, nullable
        hint = base
    return _SQL_TYPES[hint], nullable


@dataclass(frozen=True, slots=True)
class Stage:
    """A row type's per-connection staging table: `ON COMMIT DELETE ROWS`, so every flush
    starts empty. `numbered`: each staged row is led by `ord`, its position in the flush, so a
    merge can hand results back to the request that sent the row."""

    table: str
    columns: tuple[str, ...]
    ddl: str
    numbered: bool

    @classmethod
    def of(cls, row_type: type[tuple[object, ...]], table: str, *, numbered: bool = True) -> Stage:
        hints = typing.get_type_hints(row_type, include_extras=True)
        fields: tuple[str, ...] = row_type._fields  # type: ignore[attr-defined]
        columns = (("ord",) if numbered else ()) + fields
        specs = ["ord integer NOT NULL"] if numbered else []
        for name in fields:
            sql, nullable = _sql_type(hints[name])
            specs.append(f"{name} {sql}" + ("" if nullable else " NOT NULL"))
        ddl = f"CREATE TEMP TABLE IF NOT EXISTS {table} ({', '.join(specs)}) ON COMMIT DELETE ROWS"
        return cls(table, columns, ddl, numbered)

    async def copy(self, conn: asyncpg.Connection, rows: Sequence[tuple[object, ...]]) -> None:
        """All of `rows` into the staging table with one binary COPY."""
        records = [(ord_, *row) for ord_, row in enumerate(rows)] if self.numbered else rows
        await conn.copy_records_to_table(self.table, records=records, columns=self.columns)


class Merge(Protocol[RowT, ResultT]):
    """Stages and merges the rows of several requests inside the caller's transaction."""

    @property
    def row_type(self) -> type[RowT]:
        """The rows it takes: the writer hands it every request of rows of this type."""
        ...

    @property
    def kind(self) -> str:
        """What the rows are, as logs name them ("heartbeats")."""
        ...

    @property
    def table(self) -> str:
        """The table the rows are stored in, as metrics label it."""
        ...

    @property
    def stage(self) -> Stage:
        """Its staging table (created on every connection of the pool, `ingest.connection`)."""
        ...

    async def merge(
        self, conn: asyncpg.Connection, requests: Sequence[Sequence[RowT]]
    ) -> tuple[list[list[ResultT]], int]:
        """Each request's results, one per row, in the order the rows came; and how many of
        all the rows were stored (the others were absorbed by rows already there)."""
        ...


@dataclass(frozen=True, slots=True)
class RowMerge(Generic[RowT, ResultT]):
    """A `Merge` built on one set-based statement over all the rows of a flush."""

    row_type: type[RowT]
    kind: str
    table: str
    stage: Stage
    merge_rows: Callable[[asyncpg.Connection, Sequence[RowT]], Awaitable[list[ResultT]]]
    # Counts the stored rows of a whole flush at once (for bools, `sum` runs in C: no Python
    # call per row on the write path).
    count_stored: Callable[[list[ResultT]], int]

    async def merge(
        self, conn: asyncpg.Connection, requests: Sequence[Sequence[RowT]]
    ) -> tuple[list[list[ResultT]], int]:
        results = await self.merge_rows(conn, [row for rows in requests for row in rows])
        per_request: list[list[ResultT]] = []
        offset = 0
        for rows in requests:
            per_request.append(results[offset : offset + len(rows)])
            offset += len(rows)
        return per_request, self.count_stored(results)


# ---- The writer ----

# Plain-PostgreSQL mode: make sure partitions cover every accepted timestamp (used when an
# insert found no partition, e.g. after the maintenance task could not run for a while). One
# day ahead is past the newest accepted time (now + max clock skew); for the slack below, see
# `coverage`.
ENSURE_PARTITIONS_NOW = f"""
SELECT telemetry_ensure_partitions(
    table_name, partition_interval, {coverage("drop_after", "interval '1 day'", slack="partition_interval")}
) FROM retention_policies WHERE partition_interval IS NOT NULL
"""

# What callers are told: never the exception's text (it may quote SQL or other rows).
REFUSED = "the rows could not be stored; nothing was stored for this request"
UNAVAILABLE = "the database is unavailable; nothing was stored"
FAULTED = "the rows could not be stored because of a fault of the service; nothing was stored"


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


class WriteFaulted(WriterError):
    """The rows could not be committed because of a fault that is neither their data's nor the
    database's being unavailable (a schema not at head, an internal error, a bug). Like
    `WriteFailed` it fails its request alone, with a generic message; the cause is logged under
    `request_id`."""

    def __init__(self, message: str, *, request_id: str) -> None:
        super().__init__(message)
        self.request_id = request_id


@dataclass(eq=False)
class _Request:
    merge: Merge[Any, Any]
    rows: Sequence[tuple[object, ...]]
    future: asyncio.Future[Any]
    request_id: str
    enqueued_at: float = field(default_factory=time.monotonic)


@dataclass
class _Scope:
    """What one batch taken from the queue has done, across the halves it may be split into."""

    # Partitions are created at most once per batch: a row without one afterwards is its own
    # fault, found by bisection, and no half runs the creation again.
    partitions_ensured: bool = False
    ensure_partitions: bool = False


@dataclass
class GroupCommitWriter:
    pool: asyncpg.Pool
    metrics: Metrics
    # One per kind of row, in the order every transaction takes them, so that two flushes
    # never wait on each other's rows in opposite orders.
    merges: Sequence[Merge[Any, Any]]
    batch_window: timedelta = timedelta(milliseconds=5)
    batch_max_rows: int = 5000
    queue_max_rows: int = 20_000
    retry_attempts: int = 5
    retry_base_delay: float = 0.05
    retry_max_delay: float = 2.0
    flushers: int = 2
    ack_timeout: float = 10.0
    watchdog: DatabaseWatchdog = field(default_factory=DatabaseWatchdog)

    def __post_init__(self) -> None:
        _check_positive("batch_window", self.batch_window.total_seconds())
        _check_at_least("batch_max_rows", self.batch_max_rows, 1)
        _check_at_least("queue_max_rows", self.queue_max_rows, 1)
        _check_at_least("retry_attempts", self.retry_attempts, 1)
        _check_at_least("retry_base_delay", self.retry_base_delay, 0)
        _check_at_least("retry_max_delay", self.retry_max_delay, self.retry_base_delay)
        _check_at_least("flushers", self.flushers, 1)
        _check_positive("ack_timeout", self.ack_timeout)
        self._merges: tuple[Merge[Any, Any], ...] = tuple(self.merges)
        self._merge_of: dict[type, Merge[Any, Any]] = {}
        for merge in self._merges:
            if merge.row_type in self._merge_of:
                raise ValueError(f"merges: two merges take {merge.row_type.__name__}")
            self._merge_of[merge.row_type] = merge
        self.state = WriterState.CREATED
        self._queue: deque[_Request] = deque()
        self._queued_rows = 0
        self._wakeup = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.outage = OutageLog("writes", log)

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

    async def submit(self, rows: Sequence[RowT], *, request_id: str | None = None) -> list[Any]:
        """The results of `rows` (all of one row type), one per row, from the merge of that
        type (`Merge`): stored or absorbed (heartbeats, downloads), created or already
        there (dispatches), what an ack did to its command. Waits for the commit.

        Takes the caller's `request_id` (default: a new one), which a `WriteFailed` carries and
        the log line about its cause names. Raises `TypeError` for rows no merge takes."""
        self.ensure_capacity(len(rows))
        if not rows:
            return []
        merge = self._merge_of.get(type(rows[0]))
        if merge is None:
            raise TypeError(f"no merge takes {type(rows[0]).__name__} rows")
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
            results: list[Any] = await asyncio.wait_for(asyncio.shield(request.future), self.ack_timeout)
            return results
        except TimeoutError:
            self.metrics.failed_writes.labels("unconfirmed").inc()
            raise CommitUnconfirmed(
                f"commit not confirmed within {self.ack_timeout:g}s; the rows may still be stored"
            ) from None

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
                # A bug of the writer, not the rows' data: a 500, which a device retries.
                for request in batch:
                    self._fault(request)

    async def _flush(self, batch: list[_Request], scope: _Scope | None = None) -> None:
        """Commit `batch`, or isolate the request(s) that make it fail by bisection."""
        scope = scope or _Scope()
        started = time.monotonic()
        try:
            results = await self._with_retries(batch, scope)
        except WriteFailed as exc:  # unavailable, retries exhausted: nobody's rows can commit now
            self._fail(batch, exc)
            return
        except Exception as exc:
            if len(batch) == 1:
                self._refuse(batch[0], exc)
                return
            # Some request's rows cannot be written: re-run each half in its own transaction.
            half = len(batch) // 2
            await self._flush(batch[:half], scope)
            await self._flush(batch[half:], scope)
            return
        self.metrics.flush_seconds.observe(time.monotonic() - started)
        self.metrics.batch_rows.observe(sum(len(r.rows) for r in batch))
        for request, result in zip(batch, results, strict=True):
            if not request.future.done():
                request.future.set_result(result)

    def _refuse(self, request: _Request, exc: Exception) -> None:
        """`request` alone fails `exc`: log the cause under its id, answer it generically."""
        rows_at_fault = classify(exc) is Failure.ROW
        log.error(
            "request %s: %d %s row(s) %s; nothing stored for it",
            request.request_id,
            len(request.rows),
            request.merge.kind,
            "refused" if rows_at_fault else "failed by a fault that is not the rows' data",
            exc_info=exc,
        )
        if rows_at_fault:
            self._fail([request], WriteFailed(REFUSED, transient=False, request_id=request.request_id))
            return
        self._fault(request)

    def _fault(self, request: _Request) -> None:
        self.metrics.failed_writes.labels("fault").inc()
        if not request.future.done():
            request.future.set_exception(WriteFaulted(FAULTED, request_id=request.request_id))

    def _fail(self, batch: list[_Request], exc: WriteFailed) -> None:
        for request in batch:
            self.metrics.failed_writes.labels("unavailable" if exc.transient else "rejected").inc()
            if not request.future.done():
                request.future.set_exception(exc)

    async def _with_retries(self, batch: list[_Request], scope: _Scope) -> list[Any]:
        """The batch's results, retrying unavailable and aborted attempts; raises
        `WriteFailed(transient=True)` once `retry_attempts` of them failed, and any other
        exception as it is (the rows' fault, or a fault of the service: for bisection)."""
        delay = self.retry_base_delay
        failed = 0
        while True:
            try:
                with self.watchdog.track():  # each attempt, not the backoff between them
                    async with self.pool.acquire() as conn:
                        if scope.ensure_partitions:
                            await self._create_missing_partitions(conn)
                            scope.ensure_partitions, scope.partitions_ensured = False, True
                        results = await self._commit(conn, batch)
                self.outage.succeeded()
                return results
            except Exception as exc:
                kind = classify(exc)
                if is_missing_partition(exc) and not scope.partitions_ensured:
                    scope.ensure_partitions = True  # then the same batch again, at once
                    continue
                if kind not in (Failure.UNAVAILABLE, Failure.ABORTED):
                    raise
                failed += 1
                if kind is Failure.UNAVAILABLE:
                    self.outage.failed(exc)  # logs the outage's changes, not every attempt
                # An outage has its own lines; a deadlock victim is rare enough to log each time.
                quiet = kind is Failure.UNAVAILABLE
                if failed == self.retry_attempts:
                    log.log(
                        logging.DEBUG if quiet else logging.ERROR, "flush failed %d times: %r", failed, exc
                    )
                    raise WriteFailed(UNAVAILABLE, transient=True) from exc
                self.metrics.flush_retries.inc()
                level = logging.DEBUG if quiet else logging.WARNING
                log.log(
                    level,
                    "flush attempt %d failed (%s); retrying in %.2fs",
                    failed,
                    type(exc).__name__,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.retry_max_delay)

    async def _create_missing_partitions(self, conn: asyncpg.Connection) -> None:
        log.warning("insert found no partition; creating partitions now")
        await conn.execute(ENSURE_PARTITIONS_NOW)

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
