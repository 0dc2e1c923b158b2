"""Fault-run harness: a PostgreSQL cluster we may kill, stop and restart; the service as its own
process; a fleet of enrolled devices that keeps posting and remembers every acknowledgement.

A heartbeat is acknowledged when the service answered 2xx; the harness then requires its
(device, bucket) row to be in the table, whatever happened to the database or the service.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import asyncpg
import psutil

from benchmarks.database import EmbeddedCluster
from benchmarks.fleet import Device, enroll
from benchmarks.processes import ListeningProcess, create_operator

BUCKET = timedelta(seconds=10)
DEVICES = 40  # closed-loop devices of a fault run


# -- the database --------------------------------------------------------------------------------


class FaultCluster(EmbeddedCluster):
    """The benchmarks' throwaway cluster (a directory of its own, fresh databases, durable
    settings) that may also be killed, stopped and restarted: it is not the session cluster,
    and its port stays the same across restarts."""

    def processes(self) -> list[psutil.Process]:
        pid = self.postmaster_pid
        if pid is None:
            return []
        postmaster = psutil.Process(pid)
        return [postmaster, *postmaster.children(recursive=True)]

    def kill9(self) -> None:
        """SIGKILL the postmaster and every backend at once, as a crash or the OOM killer would."""
        procs = self.processes()
        for p in procs:
            p.send_signal(signal.SIGKILL)
        psutil.wait_procs(procs, timeout=10)

    def sigstop(self) -> None:
        for p in self.processes():
            p.send_signal(signal.SIGSTOP)

    def sigcont(self) -> None:
        for p in self.processes():
            p.send_signal(signal.SIGCONT)

    def restart(self) -> None:
        self.cluster.start()

    def close(self) -> None:
        self.sigcont()  # a stopped server cannot be shut down
        super().close()


# -- the service ----------------------------------------------------------------------------------


def service(
    database_url: str, mode: str, log_dir: Path, name: str = "service", workers: int = 1, **env: str
) -> ListeningProcess:
    return ListeningProcess(
        name=name,
        argv=[sys.executable, "-m", "service", "serve", "--host", "127.0.0.1", "--workers", str(workers)],
        log_dir=log_dir,
        ready_timeout=120.0,
        env={
            "DATABASE_URL": database_url,
            "TELEMETRY_STORAGE_MODE": mode,
            "TELEMETRY_LOG_LEVEL": "INFO",
            "TELEMETRY_DATA_DIR": str(log_dir / f"{name}-data"),
            **env,
        },
    )


@contextlib.asynccontextmanager
async def serving(
    database_url: str, mode: str, log_dir: Path, tag: str, workers: int = 1, **env: str
) -> AsyncIterator[tuple[ListeningProcess, Fleet]]:
    """The service as its own process (`workers` worker processes under it when > 1) with
    `DEVICES` enrolled devices posting to it. On exit the fleet stops and the service gets
    SIGTERM (its exit code is then `svc.proc.returncode`)."""
    svc = service(database_url, mode, log_dir, workers=workers, **env)
    await asyncio.to_thread(svc.start)
    try:
        fleet = await Fleet.enrolled([svc.base_url], database_url, DEVICES, tag)
        fleet.run()
        try:
            yield svc, fleet
        finally:
            await fleet.stop()
    finally:
        await asyncio.to_thread(svc.stop)


async def scrape(base_url: str) -> dict[str, float]:
    """`GET /metrics` as {'name{labels}': value}."""
    async with aiohttp.ClientSession() as session, session.get(f"{base_url}/metrics") as resp:
        text = await resp.text()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def metric_sum(metrics: dict[str, float], name: str) -> float:
    return sum(v for k, v in metrics.items() if re.match(rf"{name}(\{{|$)", k))


# -- the fleet ------------------------------------------------------------------------------------


@dataclass
class Outcome:
    sent_at: float  # monotonic
    answered_at: float
    status: int | str  # HTTP status, or the client-side error's name
    code: str | None = None  # error.code of a JSON error body


@dataclass
class Fleet:
    """`devices` enrolled devices, each posting one heartbeat at a time, every one in a new
    bucket (so each ack is exactly one row that must exist), spread over `base_urls`."""

    base_urls: list[str]
    devices: list[Device]
    pause: float = 0.005
    request_timeout: float = 30.0
    start: datetime = field(
        default_factory=lambda: (datetime.now(UTC) - timedelta(hours=24)).replace(second=0, microsecond=0)
    )
    acked: set[tuple[str, datetime]] = field(default_factory=set)
    outcomes: list[Outcome] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @classmethod
    async def enrolled(cls, base_urls: list[str], database_url: str, devices: int, tag: str) -> Fleet:
        token = await asyncio.to_thread(create_operator, database_url, f"fault-{tag}")
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        ids = [f"{tag}-{i:04d}" for i in range(devices)]
        return cls(base_urls, await enroll(base_urls[0], headers, ids, concurrency=16))

    def run(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            timeout=aiohttp.ClientTimeout(total=self.request_timeout),
        )
        self._tasks = [asyncio.create_task(self._device(i, d)) for i, d in enumerate(self.devices)]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        await self._session.close()

    async def _device(self, index: int, device: Device) -> None:
        k = 0
        while not self._stop.is_set():
            status = await self.post(index, k)
            k += 1
            if status != 200:
                await asyncio.sleep(0.05)  # a client backs off a little after an error
            await asyncio.sleep(self.pause)

    async def post(self, index: int, k: int) -> int | str:
        """Device `index` posts its `k`-th heartbeat (bucket `k` of its own timeline)."""
        device = self.devices[index]
        base = self.base_urls[(index + k) % len(self.base_urls)]
        ts = self.start + BUCKET * k + timedelta(seconds=index % 10)
        body = {"ts": ts.isoformat(), "status": "ok", "battery_pct": 50 + index % 50}
        sent = time.monotonic()
        status: int | str
        code = None
        try:
            async with self._session.post(f"{base}/v1/heartbeats", json=body, headers=device.headers) as r:
                status = r.status
                payload = await r.json(content_type=None)
                if status == 200:
                    self.acked.add((device.device_id, ts))
                else:
                    code = payload.get("error", {}).get("code")
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            status = type(exc).__name__
        self.outcomes.append(Outcome(sent, time.monotonic(), status, code))
        return status

    async def open_loop(self, rate: float, seconds: float) -> None:
        """Requests at `rate` per second whatever the answers, as a large fleet sends them: each
        from a device of its own timeline past the closed-loop ones (k from 5,000)."""
        tasks = []
        deadline = time.monotonic() + seconds
        n = 0
        while time.monotonic() < deadline:
            tasks.append(asyncio.create_task(self.post(n % len(self.devices), 5_000 + n)))
            n += 1
            await asyncio.sleep(1 / rate)
        await asyncio.gather(*tasks)

    def statuses(self, since: float = 0.0, until: float = float("inf")) -> Counter[str]:
        return Counter(
            f"{o.status}:{o.code}" if o.code else str(o.status)
            for o in self.outcomes
            if since <= o.sent_at < until
        )

    def first_success_after(self, moment: float) -> float | None:
        times = [o.answered_at for o in self.outcomes if o.sent_at >= moment and o.status == 200]
        return min(times) if times else None

    def hung(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status in ("TimeoutError", "ServerTimeoutError")]


async def missing_acks(database_url: str, acked: set[tuple[str, datetime]]) -> int:
    """How many acknowledged heartbeats are not in the table."""
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT device_id, ts FROM device_heartbeats")
    finally:
        await conn.close()
    stored = {(r["device_id"], r["ts"]) for r in rows}
    return len(acked - stored)


def log_of(log_dir: Path, name: str) -> str:
    return (log_dir / f"{name}.stderr.log").read_text(errors="replace")


def sockets_on(pid: int, port: int) -> dict[int, Counter[str]]:
    """Per child process of `pid`: its TCP sockets on `port` by state (LISTEN, ESTABLISHED)."""
    out: dict[int, Counter[str]] = {}
    for child in psutil.Process(pid).children():
        with contextlib.suppress(psutil.Error):
            states = Counter(c.status for c in child.net_connections(kind="tcp") if c.laddr.port == port)
            if states:
                out[child.pid] = states
    return out


def rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


def report(title: str, **figures: object) -> None:
    """One line per fault run, collected in FAULTS_REPORT (default benchmarks/out/faults.txt)."""
    line = f"{title}: " + ", ".join(f"{k}={v}" for k, v in figures.items())
    print(line)
    path = Path(
        os.environ.get("FAULTS_REPORT", Path(__file__).resolve().parents[2] / "benchmarks/out/faults.txt")
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(line + "\n")
