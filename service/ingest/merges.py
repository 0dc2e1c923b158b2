"""One merge per kind of row: how the rows of several requests are stored in one transaction.

The writer holds a `Merge` per kind and runs each through the same steps in `_commit` (as
telegraf's postgresql output writes every table through one loop), so adding a kind of row is
adding one `Merge` here, not another branch in the writer.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, Protocol, TypeVar

import asyncpg

from service.ingest import statements
from service.ingest.rows import (
    AckOutcome,
    AckResult,
    AckRow,
    DispatchOutcome,
    DispatchRow,
    DownloadRow,
    HeartbeatRow,
)
from service.settings import PresencePolicy

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
    ) -> tuple[list[list[ResultT]], int]:
        """Each request's results, one per row, in the order the rows came; and how many of
        all the rows were stored (the others were absorbed by rows already there)."""
        ...


@dataclass(frozen=True, slots=True)
class RowMerge(Generic[RowT, ResultT]):
    """A `Merge` built on one set-based statement over all the rows of a flush."""

    kind: str
    table: str
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


def heartbeats(
    bucket_seconds: int,
    presence: PresencePolicy,
    clock: Callable[[], datetime] | None = None,
) -> Merge[HeartbeatRow, bool]:
    """Stored (True) or absorbed by the device's `bucket_seconds` bucket (False), per row; and,
    in the same transaction, the presence of the devices that sent them. `clock` stands for the
    database's clock (tests)."""

    async def merge_rows(conn: asyncpg.Connection, rows: Sequence[HeartbeatRow]) -> list[bool]:
        stored = await statements.merge_heartbeats(conn, rows, bucket_seconds)
        await statements.update_presence(
            conn, rows, bucket_seconds, presence, None if clock is None else clock()
        )
        return stored

    return RowMerge("heartbeats", "device_heartbeats", merge_rows, sum)


def _created(outcomes: list[DispatchOutcome]) -> int:
    return sum(outcome.created for outcome in outcomes)


DISPATCHES: Merge[DispatchRow, DispatchOutcome] = RowMerge(
    "dispatches", "fcm_dispatches", statements.merge_dispatches, _created
)
DOWNLOADS: Merge[DownloadRow, bool] = RowMerge(
    "downloads", "apk_download_events", statements.merge_downloads, sum
)


def _moved(outcomes: list[AckOutcome]) -> int:
    return sum(outcome.result is AckResult.CHANGED for outcome in outcomes)


# Acks last: a dispatch and an ack of it in one flush find the command already inserted.
ACKS: Merge[AckRow, AckOutcome] = RowMerge("command acks", "commands", statements.merge_acks, _moved)
