"""Library API with the guides' semantics, for server-side callers that hold a connection.

`record_fcm_dispatch` and `record_heartbeat_with_bucketing` run the same set-based statements as
the group-commit writer, one row in its own transaction. Each returns only after its transaction
committed. A transaction the database aborted as a deadlock or serialization victim (possible
when concurrent inserts create a new TimescaleDB chunk) is retried; the database keeps every
guarantee either way.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import asyncpg

from service.db.errors import ABORTED_TRANSACTION
from service.ingest import statements
from service.ingest.rows import DispatchOutcome, DispatchRow, HeartbeatRow

T = TypeVar("T")

MAX_ATTEMPTS = 5


async def in_transaction(conn: asyncpg.Connection, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    """Run `work` in a transaction, retrying it when the database aborted it as transient."""
    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            async with conn.transaction():
                return await work(conn)
        except ABORTED_TRANSACTION:
            if attempt == MAX_ATTEMPTS:
                raise
    raise AssertionError("unreachable")


async def record_fcm_dispatch(
    conn: asyncpg.Connection,
    *,
    request_id: str,
    device_id: str,
    action: str,
    payload: dict[str, Any] | None = None,
    created_by: int | None = None,
) -> DispatchOutcome:
    """Record a dispatch once per `request_id`: `created` is False when it already existed,
    and `dispatch` is then the existing one (whoever created it, on whichever instance)."""
    await statements.prepare_connection(conn)
    row = DispatchRow(request_id, device_id, action, payload, datetime.now(UTC), created_by)

    async def work(c: asyncpg.Connection) -> DispatchOutcome:
        (outcome,) = await statements.merge_dispatches(c, [row])
        return outcome

    return await in_transaction(conn, work)


async def record_heartbeat_with_bucketing(
    conn: asyncpg.Connection,
    *,
    device_id: str,
    heartbeat_data: dict[str, Any],
    bucket_seconds: int = 10,
    ts: datetime | None = None,
) -> bool:
    """Store the heartbeat unless its device already has one in the same bucket.
    Returns True when stored, False when the bucket absorbed it."""
    await statements.prepare_connection(conn)
    extra = {
        k: v
        for k, v in heartbeat_data.items()
        if k not in ("status", "battery_pct", "app_version", "network")
    }
    row = HeartbeatRow(
        device_id,
        ts or datetime.now(UTC),
        heartbeat_data["status"],
        heartbeat_data["battery_pct"],
        heartbeat_data.get("app_version"),
        heartbeat_data.get("network"),
        extra or None,
    )

    async def work(c: asyncpg.Connection) -> bool:
        (stored,) = await statements.merge_heartbeats(c, [row], bucket_seconds)
        return stored

    return await in_transaction(conn, work)
