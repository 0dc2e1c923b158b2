"""What each process used during a phase: CPU per process (to say what limited a figure) and
the service's resident memory, sampled in a background thread.

CPU is reported in percent of one core: on a 2-core machine 200% is everything. The database's
share is the CPU time of the embedded cluster's postmaster and its children (backends that
exit during a phase take their time with them: they are few, the service's pool and the
benchmark's connections live through a phase). "Other" is the machine's busy time minus all of
those: anything else running on the machine, which distorts the figures when it is large.
With `--database-url` the database's processes are unknown and fall into "other".
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Any

import psutil


def _busy(times: Any) -> float:
    return float(
        times.user + times.system + getattr(times, "nice", 0.0) + getattr(times, "irq", 0.0)
    ) + float(getattr(times, "softirq", 0.0) + getattr(times, "steal", 0.0))


def _proc_cpu(proc: psutil.Process | None) -> float:
    if proc is None:
        return 0.0
    try:
        t = proc.cpu_times()
    except psutil.Error:
        return 0.0
    return float(t.user + t.system)


@dataclass(frozen=True, slots=True)
class CpuShare:
    """Percent of one core, over one phase; and the CPU seconds behind it (`*_s`)."""

    generator: float
    server: float
    database: float
    other: float
    cores: int
    generator_s: float = 0.0
    server_s: float = 0.0
    database_s: float = 0.0
    wall_s: float = 0.0

    @property
    def total(self) -> float:
        return self.generator + self.server + self.database + self.other

    def limited_by(self) -> str:
        """A plain reading of the shares: which process pinned a core, or the whole machine."""
        capacity = 100.0 * self.cores
        notes = []
        if self.generator >= 90.0:
            notes.append("load generator CPU-bound")
        if self.server >= 90.0:
            notes.append("server CPU-bound")
        if self.total >= 0.9 * capacity:
            notes.append(f"machine CPU saturated ({self.total:.0f}% of {capacity:.0f}%)")
        if self.other >= 25.0:
            notes.append(f"other processes used {self.other:.0f}%")
        return "; ".join(notes) or "not CPU-bound (waits: commit, network, locks)"

    def as_dict(self) -> dict[str, Any]:
        return {
            "generator_pct": round(self.generator, 1),
            "server_pct": round(self.server, 1),
            "database_pct": round(self.database, 1),
            "other_pct": round(self.other, 1),
            "cores": self.cores,
            "generator_cpu_s": round(self.generator_s, 3),
            "server_cpu_s": round(self.server_s, 3),
            "database_cpu_s": round(self.database_s, 3),
            "wall_s": round(self.wall_s, 3),
            "limited_by": self.limited_by(),
        }


def tree_cpu(root: psutil.Process | None) -> dict[int, float]:
    if root is None:
        return {}
    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return {}
    return {p.pid: _proc_cpu(p) for p in procs}


class CpuMeter:
    """`start()` … `stop()` → CpuShare of the generator (this process), the server, the
    database cluster and everything else."""

    def __init__(self, server_pid: int | None, postmaster_pid: int | None = None) -> None:
        self.me = psutil.Process(os.getpid())
        self.server = psutil.Process(server_pid) if server_pid else None
        self.postmaster = psutil.Process(postmaster_pid) if postmaster_pid else None
        self.cores = psutil.cpu_count() or 1
        self._t0 = 0.0
        self._start: tuple[float, float, float] = (0.0, 0.0, 0.0)
        self._db_start: dict[int, float] = {}

    def _snapshot(self) -> tuple[float, float, float]:
        # The server with its children: `serve --workers N` serves from N child processes.
        server = sum(tree_cpu(self.server).values())
        return (_proc_cpu(self.me), server, _busy(psutil.cpu_times()))

    def start(self) -> None:
        self._t0 = time.perf_counter()
        self._start = self._snapshot()
        self._db_start = tree_cpu(self.postmaster)

    def stop(self, external_generator_s: float = 0.0) -> CpuShare:
        """`external_generator_s`: CPU time of a generator process that has exited by now (wrk,
        from its rusage), added to this process's."""
        wall = max(time.perf_counter() - self._t0, 1e-9)
        gen, srv, total = (b - a for a, b in zip(self._start, self._snapshot(), strict=True))
        gen += external_generator_s
        db = sum(cpu - self._db_start.get(pid, 0.0) for pid, cpu in tree_cpu(self.postmaster).items())
        other = max(total - gen - srv - db, 0.0)
        return CpuShare(
            100 * gen / wall,
            100 * srv / wall,
            100 * db / wall,
            100 * other / wall,
            self.cores,
            generator_s=gen,
            server_s=srv,
            database_s=db,
            wall_s=wall,
        )


def background_cpu_pct(postmaster_pid: int | None, server_pid: int | None, seconds: float = 1.0) -> float:
    """CPU used over `seconds` by everything but this process and the server: between phases,
    that is the database's own background work (autovacuum, checkpoints) and other processes."""
    meter = CpuMeter(server_pid, postmaster_pid)
    meter.start()
    time.sleep(seconds)
    share = meter.stop()
    return share.database + share.other


class MemorySampler:
    """Samples the server's RSS every `interval` seconds; `peak()` since the last `reset()`.
    Optionally counts the server's established TCP connections on its port."""

    def __init__(self, pid: int, port: int, interval: float = 0.2) -> None:
        self.proc = psutil.Process(pid)
        self.port = port
        self.interval = interval
        self._peak = 0
        self._peak_connections = 0
        self.count_connections = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self.samples: list[tuple[float, int]] = []

    def _connections(self) -> int:
        try:
            conns = self.proc.net_connections(kind="tcp")
        except psutil.Error:
            return 0
        return sum(1 for c in conns if c.status == psutil.CONN_ESTABLISHED and c.laddr.port == self.port)

    def _run(self) -> None:
        t0 = time.monotonic()
        while not self._stop.wait(self.interval):
            try:
                rss = int(self.proc.memory_info().rss)
            except psutil.Error:
                return
            self._peak = max(self._peak, rss)
            self.samples.append((time.monotonic() - t0, rss))
            if self.count_connections:
                self._peak_connections = max(self._peak_connections, self._connections())

    def start(self) -> None:
        self._thread.start()

    def reset(self) -> None:
        self._peak = int(self.proc.memory_info().rss)
        self._peak_connections = 0

    def peak_mb(self) -> float:
        return self._peak / 1e6

    def peak_connections(self) -> int:
        return self._peak_connections

    def current_mb(self) -> float:
        return float(self.proc.memory_info().rss) / 1e6

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
