"""Where a single heartbeat's CPU goes: the service (its own process, on an embedded cluster)
under wrk's single-heartbeat load while py-spy samples it, plus the service's and PostgreSQL's
CPU per request from their own counters, the WAL written per stored heartbeat
(`pg_current_wal_lsn()` before and after) and the table's bytes per row with its indexes.

py-spy is not a dependency: install it into the virtualenv for the session
(`.venv/bin/pip install py-spy`). wrk as for `benchmarks/run.py` (`benchmarks/wrk.py`).

    .venv/bin/python -m benchmarks.profile_heartbeats --mode postgres --seconds 15 \\
        --flame benchmarks/out/heartbeat-profile.txt

Prints the wrk figures, the service's CPU-ms per 1,000 requests, and the top frames by own and
by cumulative samples (the raw collapsed stacks go to `--flame`).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil

from benchmarks.database import EmbeddedCluster, connect
from benchmarks.fleet import BucketCursor, bearer, enroll, floor_bucket
from benchmarks.processes import create_operator, service_process
from benchmarks.resources import tree_cpu
from benchmarks.wrk import WrkDevice, closed_loop, ensure_wrk
from service.db.urls import asyncpg_dsn


def top_frames(collapsed: Path, n: int = 25) -> str:
    own: Counter[str] = Counter()
    cumulative: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        samples = int(count)
        total += samples
        frames = stack.split(";")
        own[frames[-1]] += samples
        for frame in set(frames):
            cumulative[frame] += samples
    lines = [f"{total} samples", "own:"]
    lines += [f"  {100 * c / total:5.1f}%  {f}" for f, c in own.most_common(n)]
    lines += ["cumulative:"]
    lines += [f"  {100 * c / total:5.1f}%  {f}" for f, c in cumulative.most_common(n)]
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> None:
    wrk = ensure_wrk()
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if wrk is None or not Path(spy).exists():  # noqa: ASYNC240
        raise SystemExit("needs wrk and py-spy (.venv/bin/pip install py-spy)")
    cluster = EmbeddedCluster()
    out = Path(tempfile.mkdtemp(prefix="hb-profile-"))
    try:
        url = await cluster.fresh_database("profile")
        svc = service_process(url, args.mode, out / "logs", out / "data", workers=args.workers)
        if args.event_loop:
            svc.env["TELEMETRY_EVENT_LOOP"] = args.event_loop
        svc.start()
        try:
            operator = bearer(create_operator(url, "profiler"))
            ids = [f"prof-{i:05d}" for i in range(args.devices)]
            devices = await enroll(svc.base_url, operator, ids)
            start = floor_bucket(datetime.now(UTC) - timedelta(hours=3))
            cursor = BucketCursor(start, 1000)
            wrk_devices = [
                WrkDevice(
                    d.headers["Authorization"].removeprefix("Bearer "),
                    start,
                    cursor.reserve(d.device_id, 0),
                    1000,
                    cursor.offset_seconds(d.device_id),
                )
                for d in devices
            ]
            proc = psutil.Process(svc.pid)
            spy_proc = None
            if args.flame:
                args.flame.parent.mkdir(parents=True, exist_ok=True)
                spy_proc = subprocess.Popen(  # noqa: ASYNC220 (runs beside the load, not awaited)
                    [
                        spy,
                        "record",
                        "-p",
                        str(svc.pid),
                        "-d",
                        str(int(args.seconds)),
                        "-r",
                        "200",
                        "-f",
                        "raw",
                        "-o",
                        str(args.flame),
                        "--nonblocking",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            postmaster = psutil.Process(cluster.postmaster_pid)
            dsn = asyncpg_dsn(url)
            async with connect(dsn) as conn:
                rows0 = await conn.fetchval("SELECT count(*) FROM device_heartbeats")
                lsn0 = await conn.fetchval("SELECT pg_current_wal_lsn()")
            db0 = tree_cpu(postmaster)
            cpu0 = sum(sum(p.cpu_times()[:2]) for p in [proc, *proc.children(recursive=True)])
            run = await closed_loop(
                svc.base_url, wrk=wrk, devices=wrk_devices, seconds=args.seconds, workers=args.connections
            )
            cpu = sum(sum(p.cpu_times()[:2]) for p in [proc, *proc.children(recursive=True)]) - cpu0
            db_cpu = sum(v - db0.get(pid, 0.0) for pid, v in tree_cpu(postmaster).items())
            async with connect(dsn) as conn:
                wal = await conn.fetchval("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1::pg_lsn)", lsn0)
                rows = await conn.fetchval("SELECT count(*) FROM device_heartbeats")
                size = await conn.fetchval(
                    "SELECT hypertable_size('device_heartbeats')"
                    if args.mode == "timescale"
                    else "SELECT sum(pg_total_relation_size(inhrelid)) FROM pg_inherits"
                    " WHERE inhparent = 'device_heartbeats'::regclass"
                )
            stored = rows - rows0
            if spy_proc is not None:
                spy_proc.wait(60)
            s = run.fixed["heartbeat"]
            print(
                f"{args.mode} workers={args.workers} loop={args.event_loop or 'default'}:"
                f" {s.rate:,.0f} req/s,"
                f" p50 {s.p50_ms:.1f} ms p95 {s.p95_ms:.1f} ms, non-2xx {s.count - s.ok};"
                f" service CPU {1000 * cpu / max(s.ok, 1) * 1000:.1f} ms per 1,000 requests;"
                f" wrk CPU {run.extra['generator_cpu_s']:.2f} s"
            )
            print(
                f"stored {stored:,} heartbeats: PostgreSQL CPU {1e6 * db_cpu / max(stored, 1):.0f} µs,"
                f" service CPU {1e6 * cpu / max(stored, 1):.0f} µs,"
                f" WAL {float(wal) / max(stored, 1):,.0f} bytes per stored heartbeat;"
                f" table with indexes {size / max(rows, 1):,.0f} bytes per row ({rows:,} rows)"
            )
            if args.flame:
                print(top_frames(args.flame))
        finally:
            svc.stop()
    finally:
        cluster.close()
        shutil.rmtree(out, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mode", default="postgres", choices=("postgres", "timescale"))
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--devices", type=int, default=2000)
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--event-loop", choices=("uvloop", "asyncio"), default=None)
    parser.add_argument("--flame", type=Path, help="py-spy collapsed stacks to this file (else no profile)")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
