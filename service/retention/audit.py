"""Audit tables: plain tables whose old rows are expired by a batched `DELETE`.

`enrollment_events` records which tokens were used and which addresses were refused (who
enrolled and who was revoked is in the event log, `events`, a time-series table); `commands`
records what operators asked devices to do and how far each command got (kept 90 days, long
after its 2-day dispatch row). They are not partitioned (the audit tables are small and
fleet-wide, so Citus can keep them as reference tables), so retention here is a row-level
`DELETE … WHERE created_at < cutoff`, the same in both storage modes, run by the service's
maintenance task and by `telemetry retention run`.

Guarantees:
* A row is kept at least its table's window; it goes at the first run after `created_at +
  window`, so the overshoot is at most one maintenance interval.
* Every step is bounded: one `DELETE` removes at most `batch_size` rows (found through the
  `created_at` index, no sort), and a run does at most `max_batches` of them, each in its own
  transaction, so no run holds locks for long and a backlog is worked off over several runs.
* The window lives in `retention_policies` (with a NULL `partition_interval`: the table is not
  partitioned), so every instance reads the same one and `telemetry retention set` changes it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg

from service.db.errors import STATEMENT_FAILED
from service.db.retained import COMMANDS, ENROLLMENT_EVENTS, RetainedTable, RetentionKind, of_kind
from service.db.time_series import store_window_sql as _store_window_sql
from service.retention.policies import read_window

__all__ = ["AUDIT_TABLES", "COMMANDS", "ENROLLMENT_EVENTS"]

# The registry's plain tables (`service.db.retained`, kind `ROW_EXPIRY`).
AUDIT_TABLES: tuple[RetainedTable, ...] = of_kind(RetentionKind.ROW_EXPIRY)

DELETE_BATCH = 10_000


def store_window_sql(table: RetainedTable, window: timedelta) -> str:
    """For building head from the live modules (works offline): the table's window row, the
    one statement `service.db.time_series.store_window_sql`."""
    return _store_window_sql(table, window)


def _delete_sql(table: RetainedTable) -> str:
    # `id IN (… LIMIT n)`: the inner scan walks the time index and stops after n matches.
    return (
        f"DELETE FROM {table.name} WHERE id IN ("
        f"SELECT id FROM {table.name} WHERE {table.time_column} < $1 LIMIT $2)"
    )


@dataclass(frozen=True, slots=True)
class AuditExpiry:
    """What one run did to one audit table; `error` is set when it failed part-way."""

    table: str
    dry_run: bool
    window: timedelta | None = None
    cutoff: datetime | None = None  # rows created before it expire
    deleted: int = 0  # in a dry run: how many would be
    complete: bool = True  # False: the batch limit was reached with rows left
    seconds: float = 0.0
    error: str | None = None


async def expire(
    conn: asyncpg.Connection,
    table: RetainedTable,
    *,
    dry_run: bool = False,
    batch_size: int = DELETE_BATCH,
    max_batches: int | None = None,
) -> AuditExpiry:
    """Delete the table's rows older than its window, in batches (see the module docstring).

    `max_batches=None` runs until no expired row is left (the CLI); the maintenance task passes
    a limit. Never raises for a database error: the result carries it."""
    started = time.perf_counter()
    window: timedelta | None = None
    cutoff: datetime | None = None
    deleted = 0
    try:
        window = await read_window(conn, table)
        cutoff = await conn.fetchval("SELECT now() - $1::interval", window)
        if dry_run:
            deleted = await conn.fetchval(
                f"SELECT count(*) FROM {table.name} WHERE {table.time_column} < $1", cutoff
            )
            return AuditExpiry(table.name, True, window, cutoff, deleted, True, time.perf_counter() - started)
        batches = 0
        while max_batches is None or batches < max_batches:
            status = await conn.execute(_delete_sql(table), cutoff, batch_size)
            count = int(status.split()[-1])
            deleted += count
            batches += 1
            if count < batch_size:
                return AuditExpiry(
                    table.name, False, window, cutoff, deleted, True, time.perf_counter() - started
                )
        return AuditExpiry(table.name, False, window, cutoff, deleted, False, time.perf_counter() - started)
    except STATEMENT_FAILED as exc:
        return AuditExpiry(
            table.name, dry_run, window, cutoff, deleted, False, time.perf_counter() - started, error=str(exc)
        )


async def oldest_row(conn: asyncpg.Connection, table: RetainedTable) -> datetime | None:
    # min() over the created_at index: one index probe.
    return await conn.fetchval(f"SELECT min({table.time_column}) FROM {table.name}")


async def row_count(conn: asyncpg.Connection, table: RetainedTable) -> int:
    return await conn.fetchval(f"SELECT count(*) FROM {table.name}")
