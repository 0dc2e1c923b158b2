"""FCM push throughput: the sender against a fake FCM that answers every send in 20 ms.

    .venv/bin/python -m benchmarks.push                    # both transports, 20,000 pushes each
    .venv/bin/python -m benchmarks.push --pushes 100000 --in-flight 128 --transports http1

Measures, per transport and number of sends in flight: pushes per second (all answered 200,
counted), the sender's CPU seconds and peak RSS growth, and the fake's CPU seconds (it runs in
its own process, so the two do not share an event loop). Transports:

* `http1`: `service.push.fcm.FcmSender` as the service runs it: aiohttp, a bounded pool of
  HTTP/1.1 keep-alive connections (`--connections`, default = in flight).
* `http2`: the same message, token source and classification over `httpx` with `h2`, HTTP/2
  multiplexed on one connection (cleartext with prior knowledge against the fake's `h2` server;
  FCM itself is TLS, where both pay the handshake once per connection).

The pushes are produced lazily by `--in-flight` workers (never all in memory), each with its own
registration token; the goal is 1,000 pushes per second per instance (issue #24). No database:
this is the send path alone. The machine's load average is recorded with the figures.

`--outbox http,sql` measures pushes through the service's outbox instead (`run_outbox`): the
service as its own process on a throwaway cluster (postgres mode), pushes queued by posted
dispatches or by one INSERT, sent by its push worker to the fake; the load generator's, the
service's and the fake's CPU seconds are reported.

    .venv/bin/python -m benchmarks.push --outbox http,sql --pushes 20000
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import psutil
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from service.push.credentials import AccessTokens, load_service_account
from service.push.fcm import FcmSender, Outcome, SendResult, classify
from service.push.messages import CommandPush, command_push

PROJECT = "bench-project"
CLIENT_EMAIL = "push@bench-project.iam.gserviceaccount.com"
ROOT = Path(__file__).resolve().parent.parent


def _key_files(directory: Path, port: int) -> tuple[Path, Path]:
    """A service-account file and the matching public key, generated for this run."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    account = directory / "service-account.json"
    account.write_text(
        json.dumps(
            {
                "type": "service_account",
                "project_id": PROJECT,
                "private_key": private,
                "client_email": CLIENT_EMAIL,
                "token_uri": f"http://127.0.0.1:{port}/token",
            }
        )
    )
    account.chmod(0o600)
    public_path = directory / "public.pem"
    public_path.write_bytes(public)
    return account, public_path


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@asynccontextmanager
async def fake_fcm(
    port: int, token_port: int, public_key: Path, delay: float, http2: bool
) -> AsyncIterator[psutil.Process]:
    command = [sys.executable, "-m", "tests.push.fake_fcm", "--port", str(port), "--delay", str(delay)]
    command += ["--project", PROJECT, "--client-email", CLIENT_EMAIL, "--public-key", str(public_key)]
    if http2:
        command.append("--http2")
        command += ["--token-port", str(token_port)]
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)  # noqa: ASYNC220 - once per run
    try:
        assert proc.stdout is not None
        line = await asyncio.to_thread(proc.stdout.readline)
        if line.strip() != "ready":
            raise RuntimeError(f"the fake FCM did not start: {line!r}")
        yield psutil.Process(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


class Http2Sender:
    """What `FcmSender.send` does, over httpx's HTTP/2 (benchmark only)."""

    def __init__(self, project_id: str, tokens: AccessTokens, endpoint: str) -> None:
        import httpx

        self._tokens = tokens
        self._url = f"{endpoint}/v1/projects/{project_id}/messages:send"
        self._client = httpx.AsyncClient(http1=False, http2=True, timeout=10.0)

    async def send(self, push: CommandPush) -> SendResult:
        import httpx

        token = await self._tokens.token()
        try:
            response = await self._client.post(
                self._url,
                content=json.dumps(push.body()).encode(),
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            )
        except httpx.HTTPError:
            return SendResult(Outcome.RETRY, error="connection")
        return classify(response.status_code, response.content, response.headers.get("Retry-After"))

    async def close(self) -> None:
        await self._client.aclose()
        self._tokens.close()


class Peak:
    """The process's peak RSS, sampled every 50 ms while a run lasts."""

    def __init__(self) -> None:
        self._proc = psutil.Process()
        self.base = self._proc.memory_info().rss
        self.peak = self.base
        self._task: asyncio.Task[None] | None = None

    async def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, self._proc.memory_info().rss)
            await asyncio.sleep(0.05)

    def __enter__(self) -> Peak:
        self._task = asyncio.get_running_loop().create_task(self._sample())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        self.peak = max(self.peak, self._proc.memory_info().rss)


async def run_one(
    transport: str, in_flight: int, connections: int, pushes: int, delay: float, directory: Path
) -> dict[str, Any]:
    port = _free_port()
    # The token endpoint: HTTP/1.1 (google-auth's urllib3), on the send port unless that is h2.
    token_port = _free_port() if transport == "http2" else port
    account_file, public_key = _key_files(directory, token_port)
    account = load_service_account(account_file)
    endpoint = f"http://127.0.0.1:{port}"
    async with fake_fcm(port, token_port, public_key, delay, http2=transport == "http2") as fake:
        send: Callable[[CommandPush], Awaitable[SendResult]]
        if transport == "http1":
            sender: Any = FcmSender(
                account.project_id, AccessTokens(account), endpoint=endpoint, max_connections=connections
            )
        else:
            sender = Http2Sender(account.project_id, AccessTokens(account), endpoint)
        send = sender.send
        numbers = iter(range(pushes))
        outcomes: dict[str, int] = {}
        ttl = timedelta(days=1)

        async def worker() -> None:
            for n in numbers:  # shared iterator: each push is made when a worker is free
                push = command_push(f"bench-token-{n:08d}", f"bulk-1:{n}", "lock", ttl)
                result = await send(push)
                key = result.outcome.value if result.outcome is not Outcome.FINAL else f"final {result.error}"
                outcomes[key] = outcomes.get(key, 0) + 1

        await send(command_push("warm-up", "warm-up", "sync", ttl))  # the token and first connection
        me = psutil.Process()
        cpu0, fake0 = me.cpu_times(), fake.cpu_times()
        with Peak() as memory:
            started = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(in_flight)))
            elapsed = time.perf_counter() - started
        cpu1, fake1 = me.cpu_times(), fake.cpu_times()
        await sender.close()
    return {
        "transport": transport,
        "in_flight": in_flight,
        "connections": connections if transport == "http1" else 1,
        "pushes": pushes,
        "sent": outcomes.get("sent", 0),
        "outcomes": outcomes,
        "seconds": round(elapsed, 2),
        "pushes_per_s": round(pushes / elapsed),
        "sender_cpu_s": round((cpu1.user + cpu1.system) - (cpu0.user + cpu0.system), 2),
        "fake_cpu_s": round((fake1.user + fake1.system) - (fake0.user + fake0.system), 2),
        "sender_rss_growth_mb": round((memory.peak - memory.base) / 2**20, 1),
        "sender_rss_peak_mb": round(memory.peak / 2**20, 1),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }


# --- through the outbox: the service as its own process, dispatches committed, pushes sent ------


async def _wait_sent(conn: Any, total: int, within: float) -> float:
    """Seconds until `total` pushes are sent (polled every 50 ms); raises past `within`."""
    started = time.perf_counter()
    while await conn.fetchval("SELECT count(*) FROM command_pushes WHERE status = 'sent'") < total:
        if time.perf_counter() - started > within:
            raise RuntimeError("the pushes were not all sent in time")
        await asyncio.sleep(0.05)
    return time.perf_counter() - started


async def run_outbox(
    queue: str,
    pushes: int,
    devices: int,
    concurrency: int,
    delay: float,
    directory: Path,
    connections: int | None = None,
) -> dict[str, Any]:
    """`pushes` pushes through the service's outbox: queued by `POST /v1/dispatches` from this
    process (`queue="http"`, `concurrency` requests at once; the load generator) or by one
    INSERT of queued rows (`queue="sql"`: the worker alone), sent by the service's push worker
    to the fake FCM (its own process). Rates, and each process's CPU seconds, from the first
    request (or the INSERT's commit) to the last push recorded `sent`."""
    import aiohttp
    import asyncpg

    from benchmarks.database import EmbeddedCluster, migrated_database
    from benchmarks.processes import create_operator, service_process

    cluster = EmbeddedCluster()
    try:
        url = await migrated_database(cluster, "push_outbox", "postgres")
        port = _free_port()
        account_file, public_key = _key_files(directory, port)
        conn = await asyncpg.connect(url)
        # Devices with registration tokens, straight into their tables (enrolling is not measured).
        await conn.execute(
            "INSERT INTO devices (id, token_hash) SELECT 'bench-' || n, md5('bench-' || n)"
            " FROM generate_series(0, $1 - 1) n",
            devices,
        )
        await conn.execute(
            "INSERT INTO device_push_tokens (device_id, token) SELECT 'bench-' || n, 'bench-token-' || n"
            " FROM generate_series(0, $1 - 1) n",
            devices,
        )
        operator = await asyncio.to_thread(create_operator, url, "bench")
        async with fake_fcm(port, port, public_key, delay, http2=False) as fake:
            svc = service_process(url, "postgres", directory / "logs", directory / "data")
            svc.env.update(
                {
                    "TELEMETRY_FCM_CREDENTIALS_FILE": str(account_file),
                    "TELEMETRY_FCM_ENDPOINT": f"http://127.0.0.1:{port}",
                }
            )
            if connections is not None:  # the worker's sends in flight too
                svc.env["TELEMETRY_FCM_MAX_CONNECTIONS"] = str(connections)
            await asyncio.to_thread(svc.start)
            try:
                service = psutil.Process(svc.pid)
                me = psutil.Process()
                cpu = [p.cpu_times() for p in (me, service, fake)]
                rss = [service.memory_info().rss]

                async def sample_rss() -> None:  # the service's memory while the pushes go
                    while True:
                        rss.append(service.memory_info().rss)
                        await asyncio.sleep(0.2)

                sampler = asyncio.create_task(sample_rss())
                started = time.perf_counter()
                if queue == "sql":
                    await conn.execute(
                        "INSERT INTO command_pushes (id, device_id, request_id, action, expires_at)"
                        " SELECT n, 'bench-' || (n % $2), 'bench-' || n, 'lock', now() + interval '1 day'"
                        " FROM generate_series(1, $1) n",
                        pushes,
                        devices,
                    )
                    queued_s = time.perf_counter() - started
                else:
                    headers = {"Authorization": f"Bearer {operator}", "Content-Type": "application/json"}
                    numbers = iter(range(pushes))
                    statuses: dict[int, int] = {}
                    async with aiohttp.ClientSession(
                        svc.base_url, connector=aiohttp.TCPConnector(limit=concurrency)
                    ) as http:

                        async def client() -> None:
                            for n in numbers:
                                body = {
                                    "request_id": f"bench-{n}",
                                    "device_id": f"bench-{n % devices}",
                                    "action": "lock",
                                }
                                async with http.post(
                                    "/v1/dispatches", data=json.dumps(body), headers=headers
                                ) as r:
                                    await r.read()
                                    statuses[r.status] = statuses.get(r.status, 0) + 1

                        await asyncio.gather(*(client() for _ in range(concurrency)))
                    queued_s = time.perf_counter() - started
                    if statuses != {201: pushes}:
                        raise RuntimeError(f"dispatches answered {statuses}")
                await _wait_sent(conn, pushes, within=600)
                elapsed = time.perf_counter() - started
                sampler.cancel()
                after = [p.cpu_times() for p in (me, service, fake)]
                latency = await conn.fetchrow(
                    "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY s) AS p50,"
                    " percentile_cont(0.95) WITHIN GROUP (ORDER BY s) AS p95, max(attempts) AS attempts"
                    " FROM (SELECT extract(epoch FROM pushed_at - created_at) AS s, attempts"
                    " FROM command_pushes) x"
                )
                metrics = await asyncio.to_thread(_scrape, f"{svc.base_url}/metrics")
            finally:
                await asyncio.to_thread(svc.stop)
        await conn.close()
    finally:
        cluster.close()
    used = [round((a.user + a.system) - (b.user + b.system), 2) for a, b in zip(after, cpu, strict=True)]
    return {
        "queue": queue,
        "pushes": pushes,
        "devices": devices,
        "concurrency": concurrency if queue == "http" else None,
        "fcm_connections": connections or 64,
        "queued_s": round(queued_s, 2),
        "seconds": round(elapsed, 2),
        "pushes_per_s": round(pushes / elapsed),
        "dispatch_to_pushed_p50_s": round(latency["p50"], 3),
        "dispatch_to_pushed_p95_s": round(latency["p95"], 3),
        "max_attempts": latency["attempts"],
        "fcm_sends_sent": metrics.get('telemetry_fcm_sends_total{outcome="sent"}'),
        "loadgen_cpu_s": used[0],
        "service_cpu_s": used[1],
        "fake_cpu_s": used[2],
        "service_rss_start_mb": round(rss[0] / 2**20, 1),
        "service_rss_peak_mb": round(max(rss) / 2**20, 1),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }


def _scrape(url: str) -> dict[str, float]:
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as r:
        lines = r.read().decode().splitlines()
    return {
        k: float(v)
        for k, _, v in (line.rpartition(" ") for line in lines if line and not line.startswith("#"))
    }


def outbox_main(args: argparse.Namespace) -> None:
    async def run() -> None:
        with tempfile.TemporaryDirectory() as directory:
            for queue in args.outbox.split(","):
                figures = await run_outbox(
                    queue,
                    args.pushes,
                    args.devices,
                    args.concurrency,
                    args.delay,
                    Path(directory),
                    args.connections,
                )
                print(json.dumps(figures), flush=True)

    asyncio.run(run())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--transports", default="http1,http2")
    p.add_argument("--in-flight", default="64,128,256", help="comma-separated")
    p.add_argument("--connections", type=int, help="HTTP/1.1 pool size (default: = in flight)")
    p.add_argument("--pushes", type=int, default=20_000)
    p.add_argument("--delay", type=float, default=0.02, help="the fake's answer time, s")
    p.add_argument("--json", type=Path)
    p.add_argument(
        "--outbox",
        help="through the service's outbox: 'http' (dispatches posted), 'sql' (rows inserted), or both",
    )
    p.add_argument("--devices", type=int, default=1000, help="--outbox: devices with tokens")
    p.add_argument("--concurrency", type=int, default=64, help="--outbox http: requests at once")
    args = p.parse_args()
    if args.outbox:
        outbox_main(args)
        return
    results = []

    async def all_runs() -> None:
        with tempfile.TemporaryDirectory() as directory:
            for transport, in_flight in itertools.product(
                args.transports.split(","), [int(n) for n in args.in_flight.split(",")]
            ):
                figures = await run_one(
                    transport,
                    in_flight,
                    args.connections or in_flight,
                    args.pushes,
                    args.delay,
                    Path(directory),
                )
                print(json.dumps(figures), flush=True)
                results.append(figures)

    try:
        import uvloop

        uvloop.run(all_runs())
        loop = "uvloop"
    except ImportError:
        asyncio.run(all_runs())
        loop = "asyncio"
    print(f"\nevent loop: {loop}; the fake answers in {args.delay * 1000:.0f} ms\n")
    print(
        "| transport | in flight | connections | pushes/s | sent | sender CPU s | fake CPU s"
        " | sender RSS growth MB | load 1m |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['transport']} | {r['in_flight']} | {r['connections']} | {r['pushes_per_s']:,} | "
            f"{r['sent']:,}/{r['pushes']:,} | {r['sender_cpu_s']} | {r['fake_cpu_s']} | "
            f"{r['sender_rss_growth_mb']} | {r['load_average_1m']} |"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
