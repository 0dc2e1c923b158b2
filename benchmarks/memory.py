"""What the service's memory costs under overload, and which setting bounds which part.

    .venv/bin/python -m benchmarks.memory [--clients 100,250,500] [--set NAME:VAR=VALUE,...]...

One embedded cluster, one database (postgres mode); per variant a fresh `telemetry serve`
process with the variant's environment, 40 devices enrolled over the API, then `clients`
clients posting 500-heartbeat batches back to back for `--seconds` (the overload phase of
`benchmarks/run.py`, alone). The service's RSS is sampled every 20 ms from /proc; printed per
variant and client count: RSS after enrolment (idle), the peak, after the load, and the answers
by status (503 = refused with the queue full). Without `--set`, the service's defaults.

Example (the runs in RESULTS.md, "Memory under overload"):

    .venv/bin/python -m benchmarks.memory --clients 100,500 \\
        --set "old defaults:TELEMETRY_QUEUE_MAX_ROWS=50000,TELEMETRY_READ_BUFFER_BYTES=65536" \\
        --set "queue 5k:TELEMETRY_QUEUE_MAX_ROWS=5000,TELEMETRY_READ_BUFFER_BYTES=65536" \\
        --set "defaults:"
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import tempfile
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil

from benchmarks.database import EmbeddedCluster, migrated_database
from benchmarks.fleet import batch_body, bearer, enroll
from benchmarks.load import Request, closed_loop
from benchmarks.processes import create_operator, service_process

BATCH_ROWS = 500  # the service's default TELEMETRY_MAX_BATCH_HEARTBEATS
DEVICES = 40


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    name, _, assignments = text.partition(":")
    env = dict(a.split("=", 1) for a in assignments.split(",") if a.strip())
    return name.strip() or "defaults", env


async def measure(
    url: str, operator: dict[str, str], name: str, env: dict[str, str], clients: int, seconds: float, tag: str
) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="telemetry-memory-"))
    svc = service_process(url, "postgres", work / "logs", work / "data")
    svc.env.update(env)
    svc.start()
    try:
        proc = psutil.Process(svc.pid)
        devices = await enroll(svc.base_url, operator, [f"mem-{tag}-{i}" for i in range(DEVICES)])
        idle = proc.memory_info().rss
        # Every batch in buckets of its own (from 6 h back, 0.2 s apart: 2 rows per 10 s bucket;
        # the last batch ends 30 min ago), so the rows that get in are stored, not absorbed.
        rng = random.Random(1)
        base = datetime.now(UTC) - timedelta(hours=6)
        bodies = [
            (
                dev.headers,
                batch_body(
                    rng,
                    [
                        base + timedelta(seconds=0.2 * (k + BATCH_ROWS * (r + 5 * j)))
                        for k in range(BATCH_ROWS)
                    ],
                ),
            )
            for j, dev in enumerate(devices)
            for r in range(5)
        ]
        peak = idle
        done = asyncio.Event()

        async def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, proc.memory_info().rss)
                await asyncio.sleep(0.02)

        sampler = asyncio.ensure_future(sample())
        statuses: Counter[int] = Counter()

        def count(status: int, _: bytes) -> None:
            statuses[status] += 1

        await closed_loop(
            svc.base_url,
            seconds=seconds,
            workers=clients,
            traffic=lambda k: Request("batch", "POST", "/v1/heartbeats", *bodies[k % len(bodies)], count),
        )
        done.set()
        await sampler
        after = proc.memory_info().rss
    finally:
        svc.stop()
    mb = 2**20
    return {
        "variant": name,
        "env": env,
        "clients": clients,
        "idle_mb": round(idle / mb, 1),
        "peak_mb": round(peak / mb, 1),
        "after_mb": round(after / mb, 1),
        "statuses": dict(sorted(statuses.items())),
    }


async def main_async(args: argparse.Namespace) -> list[dict[str, Any]]:
    variants = [parse_variant(v) for v in args.set] or [("defaults", {})]
    cluster = EmbeddedCluster()
    results = []
    try:
        url = await migrated_database(cluster, "memory", "postgres")
        operator = bearer(create_operator(url, "memory"))
        for i, (name, env) in enumerate(variants):
            for clients in (int(c) for c in args.clients.split(",")):
                result = await measure(url, operator, name, env, clients, args.seconds, f"{i}-{clients}")
                print(json.dumps(result), flush=True)
                results.append(result)
    finally:
        cluster.close()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", default="500", help="comma-separated client counts")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        help='a variant: "NAME:VAR=VALUE,VAR=VALUE" (the service\'s environment); repeatable',
    )
    parser.add_argument("--json", type=Path, help="write the results as JSON to this path")
    args = parser.parse_args()
    results = asyncio.run(main_async(args))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
