"""What a hostile request costs the service: server CPU per request, by shape, and another
device's heartbeat latency while such requests arrive.

Starts its own cluster and the service as its own process (postgres mode: the HTTP layer does
not depend on the storage mode), sends each hostile shape `--requests` times one after another,
and reads the service process's CPU time (user + system, psutil) before and after: the CPU that
shape costs the event loop per request. Then measures a well-behaved device's heartbeats
(sequential, every 20 ms) with and without six attackers each sending about 20 hostile requests
a second.

    .venv/bin/python -m benchmarks.hostile [--requests 200]
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import psutil
from rich.console import Console
from rich.table import Table

from benchmarks.database import EmbeddedCluster, migrated_database
from benchmarks.processes import create_operator, service_process

BOMB_JSON = b"[" + b"{}," * 333_000 + b'"\\u0000"]'
EXTRA_BOMB = b'{"status":"ok","battery_pct":5,"extra":{"a":' + BOMB_JSON + b"}}"
# Just under the 20,000-value limit: the most a body may make the walk do.
WIDEST = b'{"status":"ok","battery_pct":5,"extra":{"a":[' + b",".join([b"{}"] * 19_990) + b"]}}"
PLAIN_INTS = b'{"enrollment_token": [' + b",".join([b"1"] * 450_000) + b"]}"
GOOD = json.dumps({"status": "ok", "battery_pct": 50}).encode()


async def _enroll(client: aiohttp.ClientSession, op: dict[str, str], device_id: str) -> dict[str, str]:
    r = await client.post("/v1/enrollment-tokens", json={}, headers=op)
    token = (await r.json())["token"]
    r = await client.post("/v1/enroll", json={"enrollment_token": token, "device_id": device_id})
    if r.status != 201:
        raise RuntimeError(f"enroll: {r.status} {await r.text()}")
    return {"Authorization": f"Bearer {(await r.json())['device_token']}"}


def hostile_shapes(device: dict[str, str]) -> list[tuple[str, str, bytes, dict[str, str]]]:
    """(name, path, body, headers) of each hostile request; `device` is an enrolled device's
    Authorization header, for the shapes sent after authentication."""
    gz = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
    bomb = gzip.compress(BOMB_JSON, 9)
    return [
        ("enroll: gzip bomb (1 KB → 1 MB)", "/v1/enroll", bomb, gz),
        ("enroll: 1 MB of ints", "/v1/enroll", PLAIN_INTS, {"Content-Type": "application/json"}),
        ("heartbeats, no credential: gzip bomb", "/v1/heartbeats", bomb, gz),
        ("device: 1 MB, 333k values", "/v1/heartbeats", EXTRA_BOMB, device),
        ("device: gzip bomb", "/v1/heartbeats", gzip.compress(EXTRA_BOMB, 9), {**device, **gz}),
    ]


def heavy_shapes(device: dict[str, str]) -> list[tuple[str, str, bytes, dict[str, str]]]:
    """The heaviest requests that are valid: measured for their CPU, not sent by the attackers
    (a valid row is stored, and shares its flush with everyone else's)."""
    return [("device: 20k values (the limit; stored)", "/v1/heartbeats", WIDEST, device)]


async def attack(
    base_url: str,
    shapes: list[tuple[str, str, bytes, dict[str, str]]],
    *,
    seconds: float,
    pause: float = 0.05,
) -> dict[str, int]:
    """One closed-loop attacker per shape, each pausing `pause` s between requests (about 20 a
    second), for `seconds`; how often each answer came."""
    answers: dict[str, int] = {}
    deadline = time.monotonic() + seconds

    async def attacker(path: str, data: bytes, headers: dict[str, str]) -> None:
        async with aiohttp.ClientSession(base_url) as own:
            while time.monotonic() < deadline:
                answer = await _send(own, path, data, headers)
                answers[answer] = answers.get(answer, 0) + 1
                await asyncio.sleep(pause)

    await asyncio.gather(*(attacker(p, d, h) for _, p, d, h in shapes))
    return answers


def attack_process(base_url: str, device_token: str, seconds: float) -> subprocess.Popen[str]:
    """`attack` in a process of its own, so that the attackers' client work does not delay the
    client measuring latency; it prints its answers' counts as JSON when done."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "benchmarks.hostile",
            "--attack",
            base_url,
            "--device-token",
            device_token,
            "--seconds",
            str(seconds),
        ],
        cwd=Path(__file__).resolve().parent.parent,
        stdout=subprocess.PIPE,
        text=True,
    )


def _cpu(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


async def _send(session: aiohttp.ClientSession, path: str, data: bytes, headers: dict[str, str]) -> str:
    try:
        async with session.post(path, data=data, headers=headers) as r:
            await r.read()
            return str(r.status)
    except aiohttp.ClientError as exc:
        return type(exc).__name__


async def _latencies(client: aiohttp.ClientSession, device: dict[str, str], count: int) -> list[float]:
    out = []
    for _ in range(count):
        started = time.perf_counter()
        async with client.post("/v1/heartbeats", data=GOOD, headers=device) as r:
            await r.read()
            if r.status != 200:
                raise RuntimeError(f"good heartbeat: {r.status}")
        out.append(time.perf_counter() - started)
        await asyncio.sleep(0.02)
    return sorted(out)


def _pct(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(len(values) * q))] * 1000


async def run(requests: int) -> None:
    console = Console()
    cluster = EmbeddedCluster()
    log_dir = Path(tempfile.mkdtemp(prefix="telemetry-hostile-"))
    try:
        url = await migrated_database(cluster, "hostile", "postgres")
        op = {"Authorization": f"Bearer {await asyncio.to_thread(create_operator, url, 'hostile')}"}
        svc = service_process(url, "postgres", log_dir, log_dir / "data")
        await asyncio.to_thread(svc.start)
        try:
            proc = psutil.Process(svc.pid)
            async with aiohttp.ClientSession(svc.base_url) as client:
                good = await _enroll(client, op, "good-1")
                bad = await _enroll(client, op, "bad-1")
                shapes = [
                    ("well-behaved heartbeat", "/v1/heartbeats", GOOD, good),
                    *hostile_shapes(bad),
                    *heavy_shapes(bad),
                ]
                table = Table(title=f"Server CPU per request ({requests} sequential requests per shape)")
                for col in ("shape", "body bytes", "answers", "CPU ms / request"):
                    table.add_column(col)
                for name, path, data, headers in shapes:
                    before = _cpu(proc)
                    answers = [await _send(client, path, data, headers) for _ in range(requests)]
                    cost = (_cpu(proc) - before) / requests * 1000
                    table.add_row(name, f"{len(data):,}", ",".join(sorted(set(answers))), f"{cost:.2f}")
                console.print(table)

                quiet = await _latencies(client, good, 200)
                attackers = attack_process(svc.base_url, bad["Authorization"].removeprefix("Bearer "), 8)
                await asyncio.sleep(1)
                attacked = await _latencies(client, good, 200)
                out, _ = await asyncio.to_thread(attackers.communicate)
                console.print(f"attackers' answers: {out.strip()}")
                lat = Table(title="A well-behaved device's heartbeat latency, ms (200 sequential)")
                for col in ("while", "p50", "p95", "p99", "max"):
                    lat.add_column(col)
                for label, values in (("quiet", quiet), ("6 attackers x 20/s", attacked)):
                    lat.add_row(
                        label,
                        f"{statistics.median(values) * 1000:.1f}",
                        f"{_pct(values, 0.95):.1f}",
                        f"{_pct(values, 0.99):.1f}",
                        f"{values[-1] * 1000:.1f}",
                    )
                console.print(lat)
        finally:
            await asyncio.to_thread(svc.stop)
    finally:
        cluster.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument(
        "--attack", metavar="URL", help="only attack the service at URL (a process of its own for tests)"
    )
    parser.add_argument("--device-token", help="with --attack: an enrolled device's token")
    parser.add_argument("--seconds", type=float, default=8.0, help="with --attack: for how long")
    args = parser.parse_args()
    if args.attack:
        device = {"Authorization": f"Bearer {args.device_token}"}
        answers = asyncio.run(attack(args.attack, hostile_shapes(device), seconds=args.seconds))
        print(json.dumps(answers), flush=True)
        return
    asyncio.run(run(args.requests))


if __name__ == "__main__":
    main()
