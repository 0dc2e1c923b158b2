"""The operator queries timed straight through asyncpg (no HTTP, no service): the same SQL the
endpoints run, so the gap to the HTTP figures is what the service and the network add."""

from __future__ import annotations

import random
import time
from collections import Counter

from benchmarks.database import connect
from benchmarks.latency import Summary, summarize
from service.commands.dispatches import DISPATCH_BY_KEY, DISPATCH_KEY, dispatch_by_request_id

# The statement `GET /v1/devices/{device_id}/heartbeats` runs (service/api/heartbeats.py).
LAST_100 = (
    "SELECT ts, bucket_start, received_at, status, battery_pct, app_version, network, extra"
    " FROM device_heartbeats WHERE device_id = $1 ORDER BY ts DESC LIMIT $2"
)


async def time_queries(
    dsn: str, request_ids: list[str], device_ids: list[str], samples: int, seed: int = 3
) -> tuple[dict[str, Summary], dict[str, list[float]]]:
    """Summaries and the raw samples (ms) of both statements, run alternately on one connection."""
    rng = random.Random(seed)
    async with connect(dsn) as conn:
        lookups: list[float] = []
        last100: list[float] = []
        recent = await conn.prepare(LAST_100)
        for _ in range(samples):
            rid = rng.choice(request_ids)
            t = time.perf_counter()
            await dispatch_by_request_id(conn, rid)  # the lookup endpoint's two statements
            lookups.append(time.perf_counter() - t)
            dev = rng.choice(device_ids)
            t = time.perf_counter()
            await recent.fetch(dev, 100)
            last100.append(time.perf_counter() - t)
    summaries = {
        "dispatch_lookup_sql": summarize(lookups, Counter({"200": len(lookups)}), sum(lookups)),
        "last100_sql": summarize(last100, Counter({"200": len(last100)}), sum(last100)),
    }
    samples = {
        "dispatch_lookup_sql": [x * 1000 for x in lookups],
        "last100_sql": [x * 1000 for x in last100],
    }
    return summaries, samples


async def explain(dsn: str, request_id: str, device: str) -> dict[str, str]:
    """EXPLAIN ANALYZE of both statements, for the report's notes."""
    async with connect(dsn) as conn:
        plans = {}
        key = await conn.fetchrow(DISPATCH_KEY, request_id)
        for name, sql, args in (
            ("dispatch_key", DISPATCH_KEY, (request_id,)),
            ("dispatch_lookup", DISPATCH_BY_KEY, (key["dispatch_id"], request_id, key["sent_at"])),
            ("last100", LAST_100, (device, 100)),
        ):
            rows = await conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) {sql}", *args)
            plans[name] = "\n".join(r[0] for r in rows)
        return plans
