"""One merge per kind of row: how the rows of several requests are stored in one transaction.

The writer holds a `Merge` per kind and runs each through the same steps in `_commit` (as
telegraf's postgresql output writes every table through one loop), so adding a kind of row is
adding one `Merge` here, not another branch in the writer.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

import asyncpg

from service.ingest import statements
from service.ingest.rows import DispatchOutcome, DispatchRow, DownloadRow, HeartbeatRow

RowT = TypeVar("RowT", bound=tuple[object, ...])
ResultT = TypeVar("ResultT")


class Merge(Protocol[RowT, ResultT]):
    """Stages and merges the rows of several requests inside the caller's transaction."""

    @property
    def kind(self) -> str:
        """What the rows are, as logs name them ("heartbeats")."""
        ...

    @property
    def table(self) -> str:
        """The table the rows are stored in, as metrics label it."""
        ...

    async def merge(
        self, conn: asyncpg.Connection, requests: Sequence[Sequence[RowT]]
    ) -> list[list[ResultT]]:
        """Each request's results, one per row, in the order the rows came."""
        ...

    def stored(self, result: ResultT) -> bool:
        """Whether the row of `result` was stored (else absorbed by rows already there)."""
        ...


@dataclass(frozen=True, slots=True)
class RowMerge(Generic[RowT, ResultT]):
    """A `Merge` built on one set-based statement over all the rows of a flush."""

    kind: str
    table: str
    merge_rows: Callable[[asyncpg.Connection, Sequence[RowT]], Awaitable[list[ResultT]]]
    is_stored: Callable[[ResultT], bool]

    async def merge(
        self, conn: asyncpg.Connection, requests: Sequence[Sequence[RowT]]
    ) -> list[list[ResultT]]:
        results = await self.merge_rows(conn, [row for rows in requests for row in rows])
        per_request: list[list[ResultT]] = []
        offset = 0
        for rows in requests:
            per_request.append(results[offset : offset + len(rows)])
            offset += len(rows)
        return per_request

    def stored(self, result: ResultT) -> bool:
        return self.is_stored(result)


def heartbeats(bucket_seconds: int) -> Merge[HeartbeatRow, bool]:
    """Stored (True) or absorbed by the device's `bucket_seconds` bucket (False), per row."""

    async def merge_rows(conn: asyncpg.Connection, rows: Sequence[HeartbeatRow]) -> list[bool]:
        return await statements.merge_heartbeats(conn, rows, bucket_seconds)

    return RowMerge("heartbeats", "device_heartbeats", merge_rows, bool)


def _created(outcome: DispatchOutcome) -> bool:
    return outcome.created


DISPATCHES: Merge[DispatchRow, DispatchOutcome] = RowMerge(
    "dispatches", "fcm_dispatches", statements.merge_dispatches, _created
)
DOWNLOADS: Merge[DownloadRow, bool] = RowMerge(
    "downloads", "apk_download_events", statements.merge_downloads, bool
)
