"""Pre-fill: a realistic history loaded by bulk binary COPY before anything is measured.

Heartbeats: `devices` devices, one every `interval` seconds each (device i at its own phase),
from `timeline.history_start` (older than the retention window, so that cleanup has whole
chunks/partitions to drop) up to `timeline.gap_start`, in time order as a live fleet writes
them. Every row has `bucket_start` = `ts` floored to 10 s, as the service stores it.

Dispatches: `per_device` per device spread over the window, each with its idempotency key
row (`fcm_dispatch_keys`) first, as the service's merge writes them.

In postgres mode the partitions for the old part are created first with
`telemetry_ensure_partitions` (the service only creates them from now - window on).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from benchmarks.database import connect
from benchmarks.fleet import Timeline, heartbeat_record
from service.ingest.connection import set_json_codecs

HEARTBEAT_COLUMNS = (
    "device_id",
    "bucket_start",
    "ts",
    "status",
    "battery_pct",
    "app_version",
    "network",
    "extra",
)
COPY_BATCH = 20_000


def heartbeat_rows(
    timeline: Timeline, ids: list[str], interval: float, seed: int = 7
) -> Iterator[list[tuple[Any, ...]]]:
    """Batches of COPY records in time order."""
    rng = random.Random(seed)
    step = timedelta(seconds=interval)
    start, end = timeline.history_start, timeline.gap_start
    devices = len(ids)
    offsets = [
        timedelta(seconds=(i * 7919) % max(int(interval), 1), milliseconds=i % 1000) for i in range(devices)
    ]
    extras = [None, None, None, {"temp_c": 31}, {"temp_c": 35, "storage_free_mb": 812}]
    batch: list[tuple[Any, ...]] = []
    base = start
    while base < end:
        for i in range(devices):
            ts = base + offsets[i]
            if ts >= end:
                continue
            batch.append(heartbeat_record(rng, ids[i], ts, extras))
            if len(batch) >= COPY_BATCH:
                yield batch
                batch = []
        base += step
    if batch:
        yield batch


def heartbeat_row_count(timeline: Timeline, devices: int, interval: float) -> int:
    span = (timeline.gap_start - timeline.history_start).total_seconds()
    return int(span // interval + 1) * devices


async def ensure_old_partitions(conn: asyncpg.Connection, timeline: Timeline) -> None:
    await conn.execute(
        "SELECT telemetry_ensure_partitions(table_name, partition_interval, $1::timestamptz,"
        " now() + interval '1 day') FROM retention_policies",
        timeline.history_start - timedelta(hours=6),
    )


async def copy_heartbeats(
    dsn: str,
    timeline: Timeline,
    ids: list[str],
    interval: float,
    *,
    connections: int = 2,
    advance: Callable[[int], None] | None = None,
) -> int:
    """COPY the history over `connections` connections (one encodes while the other's batch is
    being written). Returns the number of rows."""
    queue: asyncio.Queue[list[tuple[Any, ...]] | None] = asyncio.Queue(maxsize=connections * 2)
    total = 0

    async def produce() -> None:
        for batch in heartbeat_rows(timeline, ids, interval):
            await queue.put(batch)
        for _ in range(connections):
            await queue.put(None)

    async def consume() -> None:
        nonlocal total
        async with connect(dsn) as conn:
            await set_json_codecs(conn)
            while (batch := await queue.get()) is not None:
                await conn.copy_records_to_table(
                    "device_heartbeats", records=batch, columns=HEARTBEAT_COLUMNS
                )
                total += len(batch)
                if advance:
                    advance(len(batch))

    await asyncio.gather(produce(), *(consume() for _ in range(connections)))
    return total


async def copy_dispatches(
    dsn: str, timeline: Timeline, ids: list[str], per_device: int, tag: str, seed: int = 11
) -> list[str]:
    """Dispatches spread over the window; returns their request ids (for lookups)."""
    rng = random.Random(seed)
    devices = len(ids)
    count = devices * per_device
    if count == 0:
        return []
    async with connect(dsn) as conn:
        await set_json_codecs(conn)
        first = await conn.fetchval(
            "SELECT setval('fcm_dispatches_id_seq', nextval('fcm_dispatches_id_seq') + $1) - $1 + 1", count
        )
        lo = timeline.history_start + (timeline.t0 - timeline.history_start) / 8
        span = (timeline.gap_start - lo).total_seconds()
        keys: list[tuple[Any, ...]] = []
        rows: list[tuple[Any, ...]] = []
        request_ids: list[str] = []
        for n in range(count):
            rid = f"pre-{tag}-{n:08d}"
            sent_at: datetime = lo + timedelta(seconds=rng.uniform(0, span))
            dispatch_id = first + n
            keys.append((rid, dispatch_id, sent_at))
            rows.append(
                (dispatch_id, sent_at, rid, ids[n % devices], "sync_config", {"rev": n % 13}, "sent", None)
            )
            request_ids.append(rid)
        async with conn.transaction():
            await conn.copy_records_to_table(
                "fcm_dispatch_keys", records=keys, columns=("request_id", "dispatch_id", "sent_at")
            )
            await conn.copy_records_to_table(
                "fcm_dispatches",
                records=rows,
                columns=(
                    "id",
                    "sent_at",
                    "request_id",
                    "device_id",
                    "action",
                    "payload",
                    "status",
                    "created_by",
                ),
            )
    return request_ids


async def analyze(dsn: str) -> None:
    """What autovacuum would have done on a table that grew over two days: visibility map and
    statistics, so that the measured phases do not race a first autovacuum of the history."""
    async with connect(dsn) as conn:
        for table in ("device_heartbeats", "fcm_dispatches", "fcm_dispatch_keys", "devices"):
            await conn.execute(f"VACUUM (ANALYZE) {table}")
