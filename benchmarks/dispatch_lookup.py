"""Dispatch lookup by request_id, the SQL alone at 1 M dispatches: the key joined to the
dispatch (`EXISTING_DISPATCHES`, which the writer still uses for many keys at once) against the
key first and then the row with its `sent_at` as a parameter (what `GET
/v1/dispatches/{request_id}` runs), per storage mode.

    .venv/bin/python -m benchmarks.dispatch_lookup [--dispatches 1000000] [--samples 6000]

Pre-fill by INSERT … SELECT: 10,000 devices, `dispatches` keys and dispatch rows sent over the
last 40 hours (inside the 2-day window's partitions or chunks), then VACUUM ANALYZE. Both forms
alternate on one connection as prepared statements; the first 500 samples of each are dropped
(plan caching), and p50 / p95 of the rest are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time

import asyncpg

from benchmarks.database import EmbeddedCluster, each_mode, migrated_database
from benchmarks.latency import p95
from service.commands.dispatches import DISPATCH_BY_KEY, DISPATCH_KEY, EXISTING_DISPATCHES
from service.settings import StorageMode

_PREFILL = (
    "INSERT INTO devices (id, token_hash)"
    " SELECT 'd' || i, md5(i::text) || md5(i::text) FROM generate_series(1, 10000) i",
    "CREATE TEMP TABLE src AS SELECT i, 'r-' || i AS rid, now() - interval '40 hours' * random() AS sent_at"
    " FROM generate_series(1, $1::int) i",
    "INSERT INTO fcm_dispatch_keys (request_id, dispatch_id, sent_at) SELECT rid, i, sent_at FROM src",
    "INSERT INTO fcm_dispatches (id, sent_at, request_id, device_id, action, payload, status)"
    " SELECT i, sent_at, rid, 'd' || (1 + i % 10000), 'sync_config', '{\"rev\": 1}'::jsonb, 'sent' FROM src",
    "VACUUM ANALYZE fcm_dispatch_keys",
    "VACUUM ANALYZE fcm_dispatches",
)


async def bench_mode(cluster: EmbeddedCluster, mode: StorageMode, args: argparse.Namespace) -> str:
    url = await migrated_database(cluster, f"lookup_{mode}", mode)
    conn = await asyncpg.connect(url)
    try:
        for sql in _PREFILL:
            await (conn.execute(sql, args.dispatches) if "$1" in sql else conn.execute(sql))
        joined = await conn.prepare(EXISTING_DISPATCHES)
        key = await conn.prepare(DISPATCH_KEY)
        row = await conn.prepare(DISPATCH_BY_KEY)
        rng = random.Random(1)
        one: list[float] = []
        two: list[float] = []
        for n in range(2 * args.samples):
            rid = f"r-{rng.randint(1, args.dispatches)}"
            started = time.perf_counter()
            if n % 2 == 0:
                assert await joined.fetch([rid])
                one.append(time.perf_counter() - started)
            else:
                k = await key.fetchrow(rid)
                assert await row.fetchrow(k["dispatch_id"], rid, k["sent_at"])
                two.append(time.perf_counter() - started)
    finally:
        await conn.close()
    one, two = one[500:], two[500:]
    joined_ms = f"p50 {1000 * statistics.median(one):.3f} / p95 {1000 * p95(one):.3f} ms"
    two_step_ms = f"p50 {1000 * statistics.median(two):.3f} / p95 {1000 * p95(two):.3f} ms"
    return (
        f"{mode}: key joined to dispatch {joined_ms}; key then row {two_step_ms}"
        f" ({args.dispatches:,} dispatches, {len(one)} samples each)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dispatches", type=int, default=1_000_000)
    parser.add_argument("--samples", type=int, default=3000, help="samples per form")
    parser.add_argument("--modes", default="auto", help="comma-separated: postgres, timescale")
    args = parser.parse_args()
    for line in asyncio.run(each_mode(lambda cluster, mode: bench_mode(cluster, mode, args), args.modes)):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
