"""Heartbeats as the writer stores them: the row, its staging, its merge.

The merge stores at most one heartbeat per device per bucket (the database decides, across
every writer), then runs, in the same transaction and over the same staged rows, whatever the
service wires after it: device presence (`service.fleet.presence.updater`), so that a committed
heartbeat is never missing from presence.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Annotated, Any, NamedTuple

import asyncpg

from service.ingest.writer import Merge, RowMerge, Stage


class HeartbeatRow(NamedTuple):
    device_id: str
    ts: datetime
    status: str
    battery_pct: Annotated[int, "smallint"]
    app_version: str | None
    network: str | None
    extra: dict[str, Any] | None


STAGE = Stage.of(HeartbeatRow, "stage_heartbeats")

# A step over a flush's staged heartbeats, after they were merged, in the same transaction.
AfterHeartbeats = Callable[[asyncpg.Connection, Sequence[HeartbeatRow]], Awaitable[None]]

# The first heartbeat of a (device, bucket) in the flush is the candidate; it is stored unless
# the bucket already holds one (from an earlier flush or another instance). Returns the `ord`
# of every stored row; every other staged row was absorbed by its bucket.
MERGE_HEARTBEATS = """
WITH staged AS (
    SELECT *, date_bin(make_interval(secs => $1), ts, timestamptz 'epoch') AS bucket_start
    FROM stage_heartbeats
), candidate AS (
    SELECT DISTINCT ON (device_id, bucket_start) * FROM staged ORDER BY device_id, bucket_start, ord
), inserted AS (
    INSERT INTO device_heartbeats
        (device_id, bucket_start, ts, status, battery_pct, app_version, network, extra)
    SELECT device_id, bucket_start, ts, status, battery_pct, app_version, network, extra
    FROM candidate
    ON CONFLICT (device_id, bucket_start) DO NOTHING
    RETURNING device_id, bucket_start
)
SELECT c.ord FROM candidate c JOIN inserted i USING (device_id, bucket_start)
"""


async def merge_heartbeats(
    conn: asyncpg.Connection, rows: Sequence[HeartbeatRow], bucket_seconds: int
) -> list[bool]:
    """Per row: stored (True), or absorbed by its device's bucket (False)."""
    await STAGE.copy(conn, rows)
    stored = {r["ord"] for r in await conn.fetch(MERGE_HEARTBEATS, float(bucket_seconds))}
    return [ord_ in stored for ord_ in range(len(rows))]


def merge(bucket_seconds: int, *, then: Sequence[AfterHeartbeats] = ()) -> Merge[HeartbeatRow, bool]:
    """Stored (True) or absorbed by the device's `bucket_seconds` bucket (False), per row;
    then each of `then`, in order, in the same transaction. Raises `ValueError` for a
    `bucket_seconds` below 1."""
    if bucket_seconds < 1:
        raise ValueError(f"bucket_seconds is expected to be at least 1, got {bucket_seconds!r}")
    after = tuple(then)

    async def merge_rows(conn: asyncpg.Connection, rows: Sequence[HeartbeatRow]) -> list[bool]:
        stored = await merge_heartbeats(conn, rows, bucket_seconds)
        for step in after:
            await step(conn, rows)
        return stored

    return RowMerge(HeartbeatRow, "heartbeats", "device_heartbeats", STAGE, merge_rows, sum)
