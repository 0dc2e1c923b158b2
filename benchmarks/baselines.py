"""The database-side baselines the service's batched ingest is compared with, on the same
table, the same row shape and the same time distribution as the batched-ingest phase:

* raw COPY: asyncpg `copy_records_to_table` straight into `device_heartbeats` (no staging, no
  conflict handling), in batches the size of the writer's largest flush: the database ceiling.
* per-row `INSERT … ON CONFLICT DO NOTHING`, one statement and one transaction per heartbeat,
  over a pool as large as the service's: the guides' approach.
* the service's own flush SQL without the service (`service.ingest.heartbeats.merge_heartbeats`:
  binary COPY into the staging table, then the set-based merge, one transaction per batch), to
  tell the cost of the SQL from the cost of HTTP, validation and the writer around it.

Rows are generated before the clock starts; only the database work (and asyncpg's encoding)
is timed.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import asyncpg

from benchmarks.database import connect_many
from benchmarks.fleet import BucketCursor, heartbeat_record
from benchmarks.prefill import HEARTBEAT_COLUMNS
from service.app import ROW_STAGES
from service.ingest.connection import prepare_connection, set_json_codecs
from service.ingest.heartbeats import HeartbeatRow, merge_heartbeats

PER_ROW_INSERT = """
INSERT INTO device_heartbeats (device_id, bucket_start, ts, status, battery_pct, app_version, network, extra)
VALUES ($1, date_bin(interval '10 seconds', $2, timestamptz 'epoch'), $2, $3, $4, $5, $6, $7)
ON CONFLICT (device_id, bucket_start) DO NOTHING
"""


@dataclass(frozen=True, slots=True)
class Throughput:
    rows: int
    seconds: float

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "seconds": round(self.seconds, 3), "rows_per_s": round(self.rows_per_s, 1)}


def ingest_like_rows(
    prefix: str, devices: int, requests: int, batch_size: int, cursor: BucketCursor, seed: int = 5
) -> list[tuple[Any, ...]]:
    """Rows as the batched-ingest phase sends them: request k comes from device k % devices
    and carries the device's next `batch_size` buckets."""
    rng = random.Random(seed)
    rows: list[tuple[Any, ...]] = []
    for k in range(requests):
        device = f"{prefix}-{k % devices:05d}"
        rows += [heartbeat_record(rng, device, ts) for ts in cursor.take(device, batch_size)]
    return rows


async def raw_copy(
    dsn: str,
    rows: list[tuple[Any, ...]],
    *,
    batch: int,
    connections: int = 2,
    advance: Callable[[int], None] | None = None,
) -> Throughput:
    async with connect_many(dsn, connections) as conns:
        for conn in conns:
            await set_json_codecs(conn)
        chunks = iter(range(0, len(rows), batch))

        async def worker(conn: asyncpg.Connection) -> None:
            for lo in chunks:
                part = rows[lo : lo + batch]
                await conn.copy_records_to_table("device_heartbeats", records=part, columns=HEARTBEAT_COLUMNS)
                if advance:
                    advance(len(part))

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(c) for c in conns))
        return Throughput(len(rows), time.perf_counter() - t0)


async def per_row_insert(
    dsn: str,
    rows: list[tuple[Any, ...]],
    *,
    seconds: float,
    connections: int,
    advance: Callable[[float], None] | None = None,
) -> Throughput:
    """As many rows as `connections` connections insert one at a time in `seconds`."""
    async with connect_many(dsn, connections) as conns:
        for conn in conns:
            await set_json_codecs(conn)
        source = iter(rows)
        done = 0
        t0 = time.perf_counter()
        deadline = t0 + seconds

        async def worker(conn: asyncpg.Connection) -> None:
            nonlocal done
            stmt = await conn.prepare(PER_ROW_INSERT)
            for row in source:
                if time.perf_counter() >= deadline:
                    return
                await stmt.fetch(row[0], row[2], row[3], row[4], row[5], row[6], row[7])
                done += 1
                if advance and done % 200 == 0:
                    advance(min(time.perf_counter() - t0, seconds))

        await asyncio.gather(*(worker(c) for c in conns))
        return Throughput(done, time.perf_counter() - t0)


async def writer_sql(
    dsn: str,
    rows: list[tuple[Any, ...]],
    *,
    batch: int,
    connections: int = 2,
    bucket_seconds: int = 10,
    advance: Callable[[int], None] | None = None,
) -> Throughput:
    """Rows stored per second by the writer's flush statements alone, `connections` flushes at
    a time (the writer runs two)."""
    staged = [
        [HeartbeatRow(r[0], r[2], r[3], r[4], r[5], r[6], r[7]) for r in rows[lo : lo + batch]]
        for lo in range(0, len(rows), batch)
    ]
    stored = 0
    async with connect_many(dsn, connections) as conns:
        for conn in conns:
            await prepare_connection(conn, ROW_STAGES)
        chunks = iter(staged)

        async def worker(conn: asyncpg.Connection) -> None:
            nonlocal stored
            for part in chunks:
                async with conn.transaction():
                    done = await merge_heartbeats(conn, part, bucket_seconds)
                # Counted after the await: `stored += len(await …)` would read `stored` before
                # the other worker's update and lose it.
                stored += sum(done)
                if advance:
                    advance(len(part))

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(c) for c in conns))
        return Throughput(stored, time.perf_counter() - t0)
