"""Webhook and event-stream benchmark (issue 23), per storage mode:

* delivery throughput: `--events` events committed at once with `--subscriptions` subscriptions
  (each gets every event) to a local receiver answering in 1 ms, from the first commit to the
  last delivery recorded (fan-out included), one service instance;
* event → delivered at `--rate` events per second for `--seconds` (one subscription): the
  delivery row's `delivered_at` (recorded after the receiver's 2xx) minus the event's
  `occurred_at` (its transaction's clock), p50 / p95 / max;
* `--streams` SSE streams (`GET /v1/events/stream`) held open by another process, each timing
  every event's arrival against the moment its commit returned, p50 / p95 / max.

    .venv/bin/python -m benchmarks.webhooks [--events 20000] [--subscriptions 4] [--rate 100]
        [--seconds 20] [--streams 100] [--modes postgres,timescale] [--check]

The service runs in this process (as `benchmarks.database.in_process_service` does, with private
receivers allowed); the receiver and the stream clients are processes of their own, so they
do not share the service's event loop. The load average is printed with the figures: on a
shared machine it says what else ran.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import psutil

from benchmarks.database import EmbeddedCluster, connect, each_mode, migrated_database
from benchmarks.latency import p95
from benchmarks.processes import ListeningProcess
from benchmarks.report import Bound
from service.admin import create_operator
from service.events import log
from service.events.catalogue import DeviceRevoked
from service.ingest.connection import set_json_codecs
from service.settings import Settings, StorageMode
from service.webhooks.subscriptions import create_subscription

RECEIVER_DELAY = 0.001
POLL = 0.25  # seconds between two counts of the delivered rows

TARGETS: tuple[tuple[str, Bound, Any], ...] = (
    ("deliveries per second, one instance", Bound(">=", 1000, "/s"), lambda r: r["throughput_per_s"]),
    ("event → delivered p95 at 100 events/s", Bound("<=", 1.0, "s"), lambda r: r["latency_s"]["p95"]),
    ("SSE: commit → each stream p95", Bound("<=", 1.0, "s"), lambda r: r["sse_s"]["p95"]),
)


# -- the receiver and the stream clients (processes of their own) --------------------------------


async def _receiver(port: int) -> None:
    from aiohttp import web

    received = 0

    async def hook(request: web.Request) -> web.Response:
        nonlocal received
        await request.read()
        await asyncio.sleep(RECEIVER_DELAY)
        received += 1
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
    print(f"receiver listening on http://127.0.0.1:{port}", flush=True)
    await asyncio.Event().wait()


async def _streams(base_url: str, token: str, streams: int, out: Path, seconds: float) -> None:
    """`streams` SSE connections; each event's arrival time (wall clock) per stream, to `out`."""
    arrivals: list[tuple[int, int, float]] = []
    ready = 0

    async def one(index: int, session: aiohttp.ClientSession) -> None:
        nonlocal ready
        async with session.get(
            f"{base_url}/v1/events/stream",
            params={"types": "device.revoked"},
            headers={"Authorization": f"Bearer {token}"},
        ) as r:
            ready += 1
            async for line in r.content:
                if line.startswith(b"data: "):
                    arrivals.append((index, json.loads(line[6:])["id"], time.time()))

    timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as session:
        tasks = [asyncio.create_task(one(i, session)) for i in range(streams)]
        async with asyncio.timeout(60):
            while True:
                if ready == streams:
                    break
                await asyncio.sleep(0.05)
        # The streams start at the head once their first read is done: a moment for the last.
        await asyncio.sleep(1.0)
        print(f"streams listening on http://{streams}", flush=True)
        await asyncio.sleep(seconds)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.to_thread(out.write_text, json.dumps(arrivals))


# -- the service in this process ---------------------------------------------------------------


@contextlib.asynccontextmanager
async def service(url: str, mode: StorageMode) -> AsyncIterator[str]:
    from aiohttp import web

    from service.app import create_app, create_pool
    from service.migrations.migrator import Migrator
    from service.serve import head_revisions

    settings = replace(Settings(database_url=url, storage_mode=mode), webhook_allow_private=True)
    heads = head_revisions(Migrator(settings=settings, database_url=url, mode=mode))
    pool = await create_pool(url, settings)
    runner = web.AppRunner(
        create_app(settings, pool, storage_mode=mode, head_revisions=heads), access_log=None
    )
    try:
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()
        await pool.close()


class _CpuClock:
    """CPU seconds used since creation by this process (the service and the event writer), by
    PostgreSQL (every backend) and by the receiver: what one delivery costs each of them."""

    def __init__(self, cluster: EmbeddedCluster, receiver: ListeningProcess) -> None:
        self._procs = {"service": psutil.Process(), "receiver": psutil.Process(receiver.pid)}
        self._pg = psutil.Process(cluster.postmaster_pid)
        self._start = self._read()

    def _read(self) -> dict[str, float]:
        def used(p: psutil.Process) -> float:
            t = p.cpu_times()
            return t.user + t.system

        out = {name: used(p) for name, p in self._procs.items()}
        pg = 0.0
        for child in [self._pg, *self._pg.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                pg += used(child)
        out["postgres"] = pg
        return out

    def per(self, deliveries: int) -> dict[str, float]:
        now = self._read()
        return {k: 1000 * (now[k] - self._start[k]) / deliveries for k in now}


def _spread(values: list[float]) -> dict[str, float]:
    return {"p50": statistics.median(values), "p95": p95(values), "max": max(values), "n": len(values)}


async def _subscribe(conn: asyncpg.Connection, url: str, n: int) -> list[int]:
    return [
        (await create_subscription(conn, url, ["device.revoked"], "bench", allow_private=True)).id
        for _ in range(n)
    ]


async def _wait_delivered(conn: asyncpg.Connection, total: int, within: float) -> datetime:
    """Until `total` deliveries are delivered; when the last one was recorded (the database's
    clock). Polled every `POLL` s: counting the table is a scan, and polling it faster cost
    PostgreSQL about as much as claiming the deliveries did (pg_stat_statements)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        row = await conn.fetchrow(
            "SELECT count(*) AS done, max(delivered_at) AS last FROM webhook_deliveries"
            " WHERE status = 'delivered'"
        )
        if row["done"] >= total:
            return row["last"]
        await asyncio.sleep(POLL)
    raise RuntimeError(f"only {row['done']} of {total} deliveries done within {within:.0f} s")


async def bench_mode(cluster: EmbeddedCluster, mode: StorageMode, args: argparse.Namespace) -> dict[str, Any]:
    url = await migrated_database(cluster, f"webhooks_{mode}", mode)
    log_dir = Path("benchmarks/out/webhooks")
    receiver = ListeningProcess(
        name=f"receiver-{mode}",
        argv=[sys.executable, "-m", "benchmarks.webhooks", "receiver"],
        log_dir=log_dir,
        ready_timeout=30,
    )
    receiver.argv = [*receiver.argv, "--receiver-port", str(receiver.port)]
    # ListeningProcess appends `--port N`; the receiver takes it from --receiver-port instead.
    await asyncio.to_thread(receiver.start)
    hook_url = f"http://127.0.0.1:{receiver.port}/hook"
    result: dict[str, Any] = {"mode": mode, "load_before": os.getloadavg()}
    try:
        async with service(url, mode) as base_url, connect(url) as conn:
            await set_json_codecs(conn)
            # 1. Throughput: every event committed at once, `subscriptions` receivers each.
            subs = await _subscribe(conn, hook_url, args.subscriptions)
            cpu = _CpuClock(cluster, receiver)
            started: datetime = await conn.fetchval("SELECT clock_timestamp()")
            async with conn.transaction():
                for i in range(0, args.events, 1000):
                    batch = [
                        (DeviceRevoked(by="bench"), f"t-{j}", None)
                        for j in range(i, min(i + 1000, args.events))
                    ]
                    await log.record_many(conn, batch)
            done = await _wait_delivered(conn, args.events * len(subs), within=300)
            result["throughput_per_s"] = args.events * len(subs) / (done - started).total_seconds()
            result["throughput_deliveries"] = args.events * len(subs)
            result["cpu_ms_per_delivery"] = cpu.per(args.events * len(subs))
            await conn.execute("DELETE FROM webhook_subscriptions")

            # 2. Latency at a steady rate, one subscription.
            await _subscribe(conn, hook_url, 1)
            n = int(args.rate * args.seconds)
            t0 = time.monotonic()
            for i in range(n):
                async with conn.transaction():
                    await log.record(conn, DeviceRevoked(by="bench"), f"l-{i}")
                await asyncio.sleep(max(0.0, t0 + (i + 1) / args.rate - time.monotonic()))
            await _wait_delivered(conn, n, within=120)
            rows = await conn.fetch(
                "SELECT extract(epoch FROM delivered_at - (event->>'occurred_at')::timestamptz) AS s"
                " FROM webhook_deliveries WHERE status = 'delivered'"
            )
            result["latency_s"] = _spread([float(r["s"]) for r in rows])
            result["latency_attempts_per_delivery"] = float(
                await conn.fetchval("SELECT avg(attempts) FROM webhook_deliveries")
            )
            await conn.execute("DELETE FROM webhook_subscriptions")

            # 3. SSE: `streams` open streams, events at 5/s for `sse_seconds`.
            token = await create_operator(conn, f"bench-{mode}")
            out = log_dir / f"sse-{mode}.json"
            clients = ListeningProcess(
                name=f"streams-{mode}",
                argv=[
                    sys.executable,
                    "-m",
                    "benchmarks.webhooks",
                    "streams",
                    "--base-url",
                    base_url,
                    "--token",
                    token,
                    "--streams",
                    str(args.streams),
                    "--out",
                    str(out),
                    "--stream-seconds",
                    str(args.sse_seconds + 5),
                ],
                log_dir=log_dir,
                ready_timeout=60,
            )
            await asyncio.to_thread(clients.start)
            committed: dict[int, float] = {}
            for i in range(int(args.sse_seconds * 5)):
                async with conn.transaction():
                    await log.record(conn, DeviceRevoked(by="bench"), f"s-{i}")
                at = time.time()  # the commit returned
                committed[await conn.fetchval("SELECT id FROM events WHERE device_id = $1", f"s-{i}")] = at
                await asyncio.sleep(0.2)
            await asyncio.to_thread(clients.proc.wait, args.sse_seconds + 60)  # type: ignore[union-attr]
            arrivals = json.loads(out.read_text())
            lags = [at - committed[eid] for _, eid, at in arrivals if eid in committed]
            result["sse_s"] = _spread(lags)
            result["sse_expected"] = len(committed) * args.streams
            result["sse_received"] = len(lags)
    finally:
        await asyncio.to_thread(receiver.stop)
        result["load_after"] = os.getloadavg()
    return result


async def main_async(args: argparse.Namespace) -> list[dict[str, Any]]:
    return await each_mode(lambda c, m: bench_mode(c, m, args), args.modes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("role", nargs="?", default="bench", choices=["bench", "receiver", "streams"])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--subscriptions", type=int, default=4)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--sse-seconds", type=float, default=10.0)
    parser.add_argument("--modes", default="auto", help="comma-separated: postgres, timescale")
    parser.add_argument("--json", type=Path, help="write the figures as JSON to this path")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    # The helper processes' own arguments.
    parser.add_argument("--receiver-port", type=int)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--base-url")
    parser.add_argument("--token")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--stream-seconds", type=float, default=15.0)
    args = parser.parse_args(argv)
    if args.role == "receiver":
        asyncio.run(_receiver(args.receiver_port))
        return 0
    if args.role == "streams":
        asyncio.run(_streams(args.base_url, args.token, args.streams, args.out, args.stream_seconds))
        return 0
    results = asyncio.run(main_async(args))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    print("| measure | target | " + " | ".join(r["mode"] for r in results) + " |")
    print("|---|---|" + "---|" * len(results))
    rows = [
        (
            f"deliveries per second ({args.events:,} events x {args.subscriptions} subscriptions,"
            " 1 ms receiver)",
            "≥ 1,000",
            lambda r: f"{r['throughput_per_s']:,.0f}",
        ),
        (
            f"event → delivered at {args.rate:g}/s for {args.seconds:g} s, p50 / p95 / max s",
            "p95 ≤ 1",
            lambda r: "{p50:.3f} / {p95:.3f} / {max:.3f}".format(**r["latency_s"]),
        ),
        (
            f"SSE: commit → arrival, {args.streams} streams, p50 / p95 / max s (received / expected)",
            "p95 ≤ 1",
            lambda r: (
                "{p50:.3f} / {p95:.3f} / {max:.3f}".format(**r["sse_s"])
                + f" ({r['sse_received']} / {r['sse_expected']})"
            ),
        ),
        (
            "CPU per delivery, ms: service process / PostgreSQL (backends that exist at the end) / receiver",
            "",
            lambda r: "{service:.2f} / {postgres:.2f} / {receiver:.2f}".format(**r["cpu_ms_per_delivery"]),
        ),
        (
            "load average (1, 5, 15 min) before / after",
            "",
            lambda r: (
                "{:.2f} {:.2f} {:.2f}".format(*r["load_before"])
                + " / "
                + "{:.2f} {:.2f} {:.2f}".format(*r["load_after"])
            ),
        ),
    ]
    for label, target, fmt in rows:
        print(f"| {label} | {target} | " + " | ".join(fmt(r) for r in results) + " |")
    missed = 0
    for name, bound, figure in TARGETS:
        for r in results:
            value = figure(r)
            met = bound.holds(value) and (name[:3] != "SSE" or r["sse_received"] == r["sse_expected"])
            missed += not met
            print(f"{r['mode']}: {name} {value:.3g} {bound.text()}: {'met' if met else 'MISSED'}")
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
