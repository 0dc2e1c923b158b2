"""A/B of the heartbeat merge: the writer's flush statement against its alternatives and raw COPY,
on one embedded cluster, the variants taking turns (A B C R, A B C R, …) so that a drift of the
machine's speed moves them all alike. Per variant: rows stored per second (two connections, as
the writer flushes two batches at once), the ratio to raw COPY of the same round, the database
backends' CPU-µs per row (their own /proc counters) and the WAL bytes per row
(`pg_current_wal_lsn()` before and after).

    .venv/bin/python -m benchmarks.merge_levers --modes postgres,timescale --rounds 3

Variants:
* `service`: `service.ingest.heartbeats.merge_heartbeats` as it is in this tree;
* `distinct_on`: COPY into the staging table, then `DISTINCT ON (device_id, bucket_start)` over it
  and every candidate joined back to the inserted keys (the merge before issue 15);
* `stage_dedup`: dedupe (device, bucket) in Python, COPY the candidates into staging, plain
  `INSERT … SELECT … ON CONFLICT DO NOTHING RETURNING device_id, bucket_start`;
* `unnest`: dedupe in Python, one `INSERT … SELECT FROM unnest($1::text[], …) ON CONFLICT DO
  NOTHING RETURNING device_id, bucket_start` (one round trip, no staging table);
* `raw_copy`: binary COPY straight into the table (no conflict handling): the ceiling.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import psutil

from benchmarks.database import EmbeddedCluster
from service.app import ROW_STAGES
from service.db.buckets import bucket_start
from service.db.urls import asyncpg_dsn
from service.ingest import heartbeats
from service.ingest.connection import prepare_connection
from service.ingest.heartbeats import HeartbeatRow
from service.migrations.migrator import Migrator
from service.settings import Settings

Variant = Callable[[asyncpg.Connection, Sequence[HeartbeatRow], int], Awaitable[int]]

# The service's own statement (the variant the others are measured against).
DISTINCT_ON = heartbeats.MERGE_HEARTBEATS

# A lever tried and not kept: the flush's candidates (one per device and bucket, deduplicated
# in Python) as parallel arrays in one round trip, stored unless the bucket already holds one.
# Returns the key of every stored row.
INSERT_HEARTBEATS = """
INSERT INTO device_heartbeats
    (device_id, bucket_start, ts, status, battery_pct, app_version, network, extra)
SELECT * FROM unnest(
    $1::text[], $2::timestamptz[], $3::timestamptz[], $4::text[], $5::smallint[], $6::text[],
    $7::text[], $8::jsonb[]
)
ON CONFLICT (device_id, bucket_start) DO NOTHING
RETURNING device_id, bucket_start
"""

STAGE_DDL = """
CREATE TEMP TABLE IF NOT EXISTS stage_candidates (
    device_id text NOT NULL, bucket_start timestamptz NOT NULL, ts timestamptz NOT NULL,
    status text NOT NULL, battery_pct smallint NOT NULL, app_version text, network text, extra jsonb
) ON COMMIT DELETE ROWS
"""
STAGE_INSERT = """
INSERT INTO device_heartbeats (device_id, bucket_start, ts, status, battery_pct, app_version, network, extra)
SELECT * FROM stage_candidates
ON CONFLICT (device_id, bucket_start) DO NOTHING
RETURNING device_id, bucket_start
"""
COLUMNS = ("device_id", "bucket_start", "ts", "status", "battery_pct", "app_version", "network", "extra")


async def service_merge(conn: asyncpg.Connection, rows: Sequence[HeartbeatRow], bucket: int) -> int:
    return sum(await heartbeats.merge_heartbeats(conn, rows, bucket))


async def distinct_on(conn: asyncpg.Connection, rows: Sequence[HeartbeatRow], bucket: int) -> int:
    await heartbeats.STAGE.copy(conn, rows)
    return len(await conn.fetch(DISTINCT_ON, float(bucket)))


def _candidates(rows: Sequence[HeartbeatRow], bucket: int) -> dict[tuple[str, datetime], int]:
    first: dict[tuple[str, datetime], int] = {}
    for i, row in enumerate(rows):
        first.setdefault((row.device_id, bucket_start(row.ts, bucket)), i)
    return first


async def stage_dedup(conn: asyncpg.Connection, rows: Sequence[HeartbeatRow], bucket: int) -> int:
    first = _candidates(rows, bucket)
    records = [(key[0], key[1], *rows[i][1:]) for key, i in first.items()]
    await conn.copy_records_to_table("stage_candidates", records=records, columns=COLUMNS)
    return len(await conn.fetch(STAGE_INSERT))


async def unnest(conn: asyncpg.Connection, rows: Sequence[HeartbeatRow], bucket: int) -> int:
    first = _candidates(rows, bucket)
    picked = [rows[i] for i in first.values()]
    stored = await conn.fetch(
        INSERT_HEARTBEATS,
        [r.device_id for r in picked],
        [key[1] for key in first],
        [r.ts for r in picked],
        [r.status for r in picked],
        [r.battery_pct for r in picked],
        [r.app_version for r in picked],
        [r.network for r in picked],
        [r.extra for r in picked],
    )
    return len(stored)


async def raw_copy(conn: asyncpg.Connection, rows: Sequence[Any], bucket: int) -> int:
    """`rows` already carry their bucket (`with_buckets`, before the clock), as the suite's
    raw COPY baseline's do."""
    await conn.copy_records_to_table("device_heartbeats", records=rows, columns=COLUMNS)
    return len(rows)


def with_buckets(parts: list[list[HeartbeatRow]], bucket: int) -> list[list[Any]]:
    return [[(r.device_id, bucket_start(r.ts, bucket), *r[1:]) for r in part] for part in parts]


UNNEST_CONFLICT = """
INSERT INTO device_heartbeats (device_id, bucket_start, ts, status, battery_pct, app_version, network, extra)
SELECT d, date_bin(make_interval(secs => $8), t, timestamptz 'epoch'), t, s, b, a, n, e
FROM unnest($1::text[], $2::timestamptz[], $3::text[], $4::smallint[], $5::text[], $6::text[], $7::jsonb[])
    AS u(d, t, s, b, a, n, e)
ON CONFLICT (device_id, bucket_start) DO NOTHING
RETURNING device_id, ts
"""
STAGE_CONFLICT = """
INSERT INTO device_heartbeats (device_id, bucket_start, ts, status, battery_pct, app_version, network, extra)
SELECT device_id, date_bin(make_interval(secs => $1), ts, timestamptz 'epoch'), ts, status, battery_pct,
    app_version, network, extra
FROM stage_heartbeats
ON CONFLICT (device_id, bucket_start) DO NOTHING
RETURNING device_id, ts
"""


def _stored_count(rows: Sequence[HeartbeatRow], returned: list[asyncpg.Record]) -> int:
    stored = {(r[0], r[1]) for r in returned}
    n = 0
    for row in rows:
        key = (row[0], row[1])
        if key in stored:
            stored.discard(key)
            n += 1
    return n


async def unnest_conflict(conn: asyncpg.Connection, rows: Sequence[HeartbeatRow], bucket: int) -> int:
    """No Python dedupe: ON CONFLICT DO NOTHING absorbs the batch's own duplicates too."""
    columns = list(zip(*rows, strict=True))
    return _stored_count(rows, await conn.fetch(UNNEST_CONFLICT, *columns, float(bucket)))


async def stage_conflict(conn: asyncpg.Connection, rows: Sequence[HeartbeatRow], bucket: int) -> int:
    await heartbeats.STAGE.copy(conn, rows)
    return _stored_count(rows, await conn.fetch(STAGE_CONFLICT, float(bucket)))


VARIANTS: dict[str, Variant] = {
    "unnest_conflict": unnest_conflict,
    "stage_conflict": stage_conflict,
    "service": service_merge,
    "distinct_on": distinct_on,
    "stage_dedup": stage_dedup,
    "unnest": unnest,
    "raw_copy": raw_copy,
}


def batches(prefix: str, devices: int, buckets: int, batch: int, dup_every: int) -> list[list[HeartbeatRow]]:
    """Device-major rows (as the batched-ingest phase sends them: one request per device), one per
    bucket in the last `buckets` buckets; every `dup_every`-th row is followed by a second row in
    the same bucket (absorbed), 0 for none."""
    rng = random.Random(7)
    start = bucket_start(datetime.now(UTC) - timedelta(seconds=10 * buckets + 600), 10)
    rows: list[HeartbeatRow] = []
    for d in range(devices):
        device = f"{prefix}-{d:05d}"
        for k in range(buckets):
            ts = start + timedelta(seconds=10 * k + rng.randrange(0, 9))
            row = HeartbeatRow(device, ts, "ok", rng.randint(5, 100), "4.12.0", "wifi", None)
            rows.append(row)
            if dup_every and len(rows) % dup_every == 0:
                rows.append(row._replace(ts=ts + timedelta(milliseconds=500)))
    return [rows[lo : lo + batch] for lo in range(0, len(rows), batch)]


async def run_variant(
    conns: list[asyncpg.Connection], pids: list[int], variant: Variant, parts: list[list[Any]]
) -> dict[str, float]:
    procs = [psutil.Process(p) for p in pids]
    cpu0 = sum(sum(p.cpu_times()[:2]) for p in procs)
    client0 = time.process_time()
    lsn0 = await conns[0].fetchval("SELECT pg_current_wal_lsn()")
    chunks = iter(parts)
    stored = 0

    async def worker(conn: asyncpg.Connection) -> None:
        nonlocal stored
        for part in chunks:
            async with conn.transaction():
                n = await variant(conn, part, 10)
            stored += n

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in conns))
    seconds = time.perf_counter() - t0
    wal = await conns[0].fetchval("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1::pg_lsn)", lsn0)
    cpu = sum(sum(p.cpu_times()[:2]) for p in procs) - cpu0
    client = time.process_time() - client0
    return {
        "rows_per_s": stored / seconds,
        "stored": stored,
        "db_cpu_us_per_row": 1e6 * cpu / stored,
        "client_cpu_us_per_row": 1e6 * client / stored,
        "wal_bytes_per_row": float(wal) / stored,
    }


async def run_mode(
    cluster: EmbeddedCluster, mode: str, args: argparse.Namespace
) -> dict[str, list[dict[str, float]]]:
    url = await cluster.fresh_database(f"levers_{mode}")
    await asyncio.to_thread(Migrator(settings=Settings(), database_url=url, mode=mode).upgrade, "head")
    dsn = asyncpg_dsn(url)
    conns = [await asyncpg.connect(dsn) for _ in range(2)]
    for conn in conns:
        await prepare_connection(conn, ROW_STAGES)
        await conn.execute(STAGE_DDL)
    pids = [conn.get_server_pid() for conn in conns]
    names = [n.strip() for n in args.variants.split(",")]
    results: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    try:
        for round_ in range(args.rounds):
            for name in names:
                prefix = f"{mode}-{name}-{round_}"
                dups = 0 if name == "raw_copy" else args.dup_every  # COPY cannot take them
                parts: list[list[Any]] = batches(prefix, args.devices, args.buckets, args.batch, dups)
                if name == "raw_copy":
                    parts = with_buckets(parts, 10)
                await conns[0].execute("CHECKPOINT")
                figures = await run_variant(conns, pids, VARIANTS[name], parts)
                results[name].append(figures)
                print(
                    f"{mode} round {round_} {name:15s} {figures['rows_per_s']:>10,.0f} rows/s"
                    f" ({figures['stored']:,.0f} stored)"
                    f"  db {figures['db_cpu_us_per_row']:.2f} µs/row"
                    f"  client {figures['client_cpu_us_per_row']:.2f} µs/row"
                    f"  WAL {figures['wal_bytes_per_row']:.0f} B/row",
                    flush=True,
                )
        rows = await conns[0].fetchval("SELECT count(*) FROM device_heartbeats")
        size = await conns[0].fetchval(
            "SELECT hypertable_size('device_heartbeats')"
            if mode == "timescale"
            else "SELECT sum(pg_total_relation_size(inhrelid)) FROM pg_inherits"
            " WHERE inhparent = 'device_heartbeats'::regclass"
        )
        print(f"{mode}: {rows:,} rows, {size:,} bytes with indexes: {size / rows:.0f} bytes per row")
    finally:
        for conn in conns:
            await conn.close()
        await cluster.drop_database(f"levers_{mode}")
    return results


def summarize(mode: str, results: dict[str, list[dict[str, float]]]) -> None:
    copy = results.get("raw_copy")
    print(f"\n{mode}: median over rounds; ratio to raw COPY taken round by round")
    print("| variant | rows/s | ÷ raw COPY | DB CPU-µs/row | client CPU-µs/row | WAL B/row |")
    print("|---|---|---|---|---|---|")
    for name, runs in results.items():
        ratio = (
            statistics.median(r["rows_per_s"] / c["rows_per_s"] for r, c in zip(runs, copy, strict=True))
            if copy
            else float("nan")
        )
        print(
            f"| {name} | {statistics.median(r['rows_per_s'] for r in runs):,.0f} | {ratio:.2f} |"
            f" {statistics.median(r['db_cpu_us_per_row'] for r in runs):.2f} |"
            f" {statistics.median(r['client_cpu_us_per_row'] for r in runs):.2f} |"
            f" {statistics.median(r['wal_bytes_per_row'] for r in runs):.0f} |"
        )


async def main_async(args: argparse.Namespace) -> None:
    cluster = EmbeddedCluster()
    try:
        for mode in args.modes.split(","):
            if mode == "timescale" and not cluster.timescale_available:
                print("timescale mode skipped: TimescaleDB not available")
                continue
            summarize(mode, await run_mode(cluster, mode, args))
    finally:
        cluster.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--modes", default="postgres,timescale")
    parser.add_argument("--variants", default="service,distinct_on,stage_conflict,unnest_conflict,raw_copy")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--buckets", type=int, default=100, help="rows per device")
    parser.add_argument("--batch", type=int, default=5000, help="rows per flush (the writer's largest)")
    parser.add_argument("--dup-every", type=int, default=0, help="add a same-bucket row after every Nth")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
