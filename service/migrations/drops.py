"""What a downgrade would drop, read from the SQL Alembic would run, with row counts.

`planned_drops` generates the downgrade's offline SQL (the same revisions, in the database's own
storage mode, without touching the database) and lists every `DROP TABLE` and `DROP COLUMN` in
it, then counts the rows each dropped table or column holds now. The database is not changed.
"""

from __future__ import annotations

import asyncio
import io
import re
from dataclasses import dataclass

from service.db.preflight import connect
from service.migrations.migrator import MigrationError, Migrator
from service.settings import Settings, StorageMode

# A continuous aggregate (a rollup in timescale mode) holds data like a table.
_DROP_TABLE = re.compile(r"\bDROP (?:TABLE|MATERIALIZED VIEW) (?:IF EXISTS )?(?P<table>[\w.\"]+)", re.I)
_DROP_COLUMN = re.compile(
    r"\bALTER TABLE (?P<table>[\w.\"]+) DROP COLUMN (?:IF EXISTS )?(?P<column>[\w\"]+)", re.I
)


@dataclass(frozen=True, slots=True)
class Drop:
    table: str
    column: str | None
    rows: int | None  # None: the table does not exist (nothing to lose)

    def __str__(self) -> str:
        what = f"column {self.table}.{self.column}" if self.column else f"table {self.table}"
        rows = "absent" if self.rows is None else f"{self.rows} rows"
        return f"{what} ({rows})"


def resolve_target(migrator: Migrator, current: frozenset[str], target: str) -> str:
    """An absolute revision (or `base`) for `target`, which may be relative (`-N`)."""
    script = migrator.script()
    if target.startswith("-") and target[1:].isdigit():
        if len(current) != 1:
            raise MigrationError(f"cannot step back from {len(current)} heads; name the revision")
        revision: str | None = next(iter(current))
        for _ in range(int(target[1:])):
            down = script.get_revision(revision).down_revision if revision else None
            if isinstance(down, tuple):
                raise MigrationError("stepping back over a merge: name the revision")
            revision = down
        return revision or "base"
    if target == "base":
        return target
    found = script.get_revision(target)
    if found is None:
        raise MigrationError(f"no revision {target!r}")
    return found.revision


def _dropped(sql: str) -> list[tuple[str, str | None]]:
    found: list[tuple[str, str | None]] = []
    for line in sql.splitlines():
        for m in _DROP_TABLE.finditer(line):
            found.append((m["table"].strip('"'), None))
        for m in _DROP_COLUMN.finditer(line):
            found.append((m["table"].strip('"'), m["column"].strip('"')))
    # Partitions and chunks go with their parent table.
    return [(t, c) for t, c in dict.fromkeys(found) if "." not in t]


async def _count(url: str, settings: Settings, drops: list[tuple[str, str | None]]) -> list[Drop]:
    conn = await connect(url, settings)
    try:
        counted: list[Drop] = []
        for table, column in drops:
            exists = await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", table)
            if not exists:
                counted.append(Drop(table, column, None))
                continue
            where = f' WHERE "{column}" IS NOT NULL' if column else ""
            rows = await conn.fetchval(f'SELECT count(*) FROM "{table}"{where}')
            counted.append(Drop(table, column, int(rows)))
        return counted
    finally:
        await conn.close()


def planned_drops(
    settings: Settings, url: str, mode: StorageMode, current: frozenset[str], target: str
) -> list[Drop]:
    if not current or current == {target}:
        return []
    offline = Migrator(settings=settings, database_url=None, mode=mode, stdout=io.StringIO())
    start = next(iter(current)) if len(current) == 1 else "heads"
    offline.downgrade(f"{start}:{target}", sql=True)
    sql = offline.stdout.getvalue()  # type: ignore[attr-defined]
    return asyncio.run(_count(url, settings, _dropped(sql)))
