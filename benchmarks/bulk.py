"""Bulk dispatch: 100,000 targets, their commands (and pushes) created while heartbeats go on.

    .venv/bin/python -m benchmarks.bulk                      # every mode, 100,000 devices
    .venv/bin/python -m benchmarks.bulk --devices 20000 --modes postgres --no-fcm

Per storage mode: a throwaway database with `--devices` enrolled devices (each with an FCM
registration token), the service as its own process with FCM configured against the fake FCM
(its own process, answering in 20 ms) unless `--no-fcm`, and `--clients` devices posting
heartbeats in a closed loop from this process for the whole run. After a quiet baseline it posts
one `{"selector": {"all": true}}` bulk and measures:

* the 202's latency and `target_count`;
* creation: from the bulk's `created_at` to its `expanded_at` (the database's clock), with the
  commands and queued pushes counted by SQL afterwards (one each per device, or it fails);
* heartbeat latency (p50, p95, max) during creation against the baseline, and none failed;
* `GET /v1/dispatches/bulk/{id}` (counts over every command, first page) once created;
* cancel: `POST …/cancel` of all the open commands, its latency and count.

The load generator's, the service's and the fake's CPU seconds are reported, and the load average.
The goal (issue #24): 100,000 targets created in at most 10 s while heartbeat ingest goes on.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from benchmarks.latency import p95
from benchmarks.push import _free_port, _key_files, fake_fcm

GOAL_SECONDS = 10.0


Sample = tuple[float, float, int]  # sent at, seconds, HTTP status


async def _heartbeats(base_url: str, tokens: list[str], stop: asyncio.Event, samples: list[Sample]) -> None:
    """Each token posts heartbeats back to back until `stop`: (sent at, seconds, status)."""
    import aiohttp

    async with aiohttp.ClientSession(base_url, connector=aiohttp.TCPConnector(limit=len(tokens))) as http:

        async def device(token: str) -> None:
            headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
            body = json.dumps({"status": "ok", "battery_pct": 70})
            while not stop.is_set():
                started = time.perf_counter()
                async with http.post("/v1/heartbeats", data=body, headers=headers) as r:
                    await r.read()
                samples.append((started, time.perf_counter() - started, r.status))

        await asyncio.gather(*(device(t) for t in tokens))


def _latency(samples: list[Sample], start: float, end: float) -> dict[str, Any]:
    window = [s for s in samples if start <= s[0] < end]
    ms = [s[1] * 1000 for s in window]
    if not ms:
        return {"n": 0}
    return {
        "n": len(ms),
        "p50_ms": round(statistics.median(ms), 1),
        "p95_ms": round(p95(ms), 1),
        "max_ms": round(max(ms), 1),
        "failed": sum(1 for s in window if s[2] != 200),
    }


async def run_mode(mode: str, args: argparse.Namespace, directory: Path) -> dict[str, Any]:
    import aiohttp
    import asyncpg

    from benchmarks.database import EmbeddedCluster, migrated_database
    from benchmarks.processes import create_operator, service_process

    cluster = EmbeddedCluster()
    try:
        if mode == "timescale" and not cluster.timescale_available:
            return {"mode": mode, "skipped": "TimescaleDB is not available to the embedded cluster"}
        url = await migrated_database(cluster, f"bulk_{mode}", mode)  # type: ignore[arg-type]
        conn = await asyncpg.connect(url)
        await conn.execute(
            "INSERT INTO devices (id, token_hash) SELECT 'bulk-' || n,"
            " encode(sha256(('dev_bulk-' || n)::bytea), 'hex') FROM generate_series(0, $1 - 1) n",
            args.devices,
        )
        await conn.execute(
            "INSERT INTO device_push_tokens (device_id, token) SELECT 'bulk-' || n, 'bulk-token-' || n"
            " FROM generate_series(0, $1 - 1) n",
            args.devices,
        )
        await conn.execute("ANALYZE")
        operator = await asyncio.to_thread(create_operator, url, "bench")
        port = _free_port()
        account_file, public_key = _key_files(directory, port)
        tokens = [f"dev_bulk-{n}" for n in range(args.clients)]
        figures: dict[str, Any] = {
            "mode": mode,
            "devices": args.devices,
            "fcm": args.fcm,
            "clients": args.clients,
        }
        async with fake_fcm(port, port, public_key, 0.02, http2=False) as fake:
            svc = service_process(url, mode, directory / f"logs-{mode}", directory / f"data-{mode}")
            if args.fcm:
                svc.env["TELEMETRY_FCM_CREDENTIALS_FILE"] = str(account_file)
                svc.env["TELEMETRY_FCM_ENDPOINT"] = f"http://127.0.0.1:{port}"
            await asyncio.to_thread(svc.start)
            try:
                procs = [psutil.Process(), psutil.Process(svc.pid), fake]
                stop = asyncio.Event()
                samples: list[Sample] = []
                beats = asyncio.create_task(_heartbeats(svc.base_url, tokens, stop, samples))
                await asyncio.sleep(1.0)  # warm
                baseline_start = time.perf_counter()
                await asyncio.sleep(args.baseline)
                cpu = [p.cpu_times() for p in procs]
                headers = {"Authorization": f"Bearer {operator}"}
                body = {"request_id": f"bench-{mode}", "action": "lock", "selector": {"all": True}}
                async with aiohttp.ClientSession(svc.base_url) as http:
                    posted = time.perf_counter()
                    async with http.post("/v1/dispatches/bulk", json=body, headers=headers) as r:
                        answer = await r.json()
                        if r.status != 202:
                            raise RuntimeError(f"bulk answered {r.status}: {answer}")
                    figures["post_ms"] = round((time.perf_counter() - posted) * 1000, 1)
                    figures["target_count"] = answer["target_count"]
                    bulk_id = answer["id"]
                    while (
                        await conn.fetchval("SELECT expanded_at FROM bulk_dispatches WHERE id = $1", bulk_id)
                    ) is None:
                        if time.perf_counter() - posted > 300:
                            raise RuntimeError("the bulk was not created within 300 s")
                        await asyncio.sleep(0.05)
                    created = time.perf_counter()
                    after = [p.cpu_times() for p in procs]
                    await asyncio.sleep(1.0)
                    stop.set()
                    await beats
                    took = await conn.fetchval(
                        "SELECT extract(epoch FROM expanded_at - created_at) FROM bulk_dispatches"
                        " WHERE id = $1",
                        bulk_id,
                    )
                    figures["creation_s"] = round(float(took), 2)
                    figures["commands"] = await conn.fetchval(
                        "SELECT count(DISTINCT device_id) FROM commands"
                    )
                    figures["pushes_queued"] = await conn.fetchval("SELECT count(*) FROM command_pushes")
                    figures["heartbeats_baseline"] = _latency(samples, baseline_start, posted)
                    figures["heartbeats_during"] = _latency(samples, posted, created)
                    started = time.perf_counter()
                    async with http.get(f"/v1/dispatches/bulk/{bulk_id}", headers=headers) as r:
                        view = await r.json()
                    figures["get_ms"] = round((time.perf_counter() - started) * 1000, 1)
                    figures["counted"] = view["counts"]["created"]
                    started = time.perf_counter()
                    async with http.post(f"/v1/dispatches/bulk/{bulk_id}/cancel", headers=headers) as r:
                        cancelled = await r.json()
                    figures["cancel_s"] = round(time.perf_counter() - started, 2)
                    figures["cancelled"] = cancelled["cancelled"]
                used = [
                    round((a.user + a.system) - (b.user + b.system), 2)
                    for a, b in zip(after, cpu, strict=True)
                ]
                figures["loadgen_cpu_s"], figures["service_cpu_s"], figures["fake_cpu_s"] = used
            finally:
                await asyncio.to_thread(svc.stop)
        await conn.close()
    finally:
        cluster.close()
    figures["load_average_1m"] = round(os.getloadavg()[0], 2)
    if figures["commands"] != args.devices or figures["counted"] != args.devices:
        raise RuntimeError(f"expected one command per device: {figures}")
    if args.fcm and figures["pushes_queued"] != args.devices:
        raise RuntimeError(f"expected one push per command: {figures}")
    figures["goal_met"] = figures["creation_s"] <= GOAL_SECONDS
    return figures


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", type=int, default=100_000)
    p.add_argument("--clients", type=int, default=16, help="devices posting heartbeats throughout")
    p.add_argument("--baseline", type=float, default=3.0, help="seconds of heartbeats before the bulk")
    p.add_argument("--modes", default="postgres,timescale")
    p.add_argument("--no-fcm", dest="fcm", action="store_false", help="no FCM: commands without pushes")
    args = p.parse_args()

    async def run() -> None:
        with tempfile.TemporaryDirectory() as directory:
            for mode in args.modes.split(","):
                print(json.dumps(await run_mode(mode, args, Path(directory))), flush=True)

    asyncio.run(run())


if __name__ == "__main__":
    main()
