"""One merge per kind of row: how the rows of several requests are stored in one transaction.

A kind of row is declared once, as a `NamedTuple` in the package whose lifecycle it feeds
(`ingest.heartbeats`, `commands.dispatches`, `commands.acks`, `rollout.downloads`): its staging
table, columns and COPY are derived from that type (`Stage`), and its `Merge` names the type, so
the writer hands each request to the merge of its rows' type. The writer runs every merge it
was given through the same steps in `_commit` (as telegraf's postgresql output writes every
table through one loop), without knowing any of them: adding a kind is one row type and one
merge, listed where the service is wired (`service.app.row_merges`).
"""

from __future__ import annotations

import types
import typing
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, Protocol, TypeVar

import asyncpg

RowT = TypeVar("RowT", bound=tuple[object, ...])
ResultT = TypeVar("ResultT")

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
