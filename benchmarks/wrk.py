"""wrk, a native HTTP load generator, for the closed-loop single-heartbeat phases (the HTTP ceiling
and the service's saturation): the Python generator pins its own core long before the trivial
handler is saturated, so its ceiling was a lower bound.

* `ensure_wrk()` finds `wrk`, or installs the Debian package when running as root with apt-get
  (as `scripts/bootstrap.sh` installs PostgreSQL); otherwise it says how to install it and the
  suite falls back to its Python generator, labelled as such in the report.
* `closed_loop(...)` runs wrk with `wrk_heartbeats.lua` (every request a single heartbeat in a
  fresh bucket of one of the enrolled devices) and returns a `load.Run` whose summary holds
  wrk's own figures (requests, non-2xx answers, socket errors, p50/p95/p99/max latency) and
  whose `extra["generator_cpu_s"]` is wrk's CPU time (user + system, from its rusage).
  With `rate=R` it offers about R req/s instead: each connection waits a random (exponential)
  think time after each answer, of mean `workers / R` seconds less the expected latency. That
  is a paced closed loop, not a strictly open one: when the server slows down, the offered
  rate drops with it, so the report gives the rate achieved next to the one asked for.
* `gets(...)` runs wrk with `wrk_gets.lua`: operator reads (dispatch lookups, last-100) back to
  back, each to a path drawn at random, so that their latency is the service's and not that of
  a Python client's event loop.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from benchmarks.latency import Recorder, Summary
from benchmarks.load import Run, Tick

SCRIPT = Path(__file__).resolve().parent / "wrk_heartbeats.lua"
GETS_SCRIPT = Path(__file__).resolve().parent / "wrk_gets.lua"
THREADS = 2


def ensure_wrk(log: Callable[[str], None] = print) -> str | None:
    """The path of `wrk`, installing the Debian package if we can; None (with a message) if not."""
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        log("installing the load generator wrk (Debian package)")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=False, env=env, capture_output=True)
        done = subprocess.run(
            ["apt-get", "install", "-y", "-qq", "wrk"], check=False, env=env, capture_output=True, text=True
        )
        if done.returncode != 0:
            log(f"apt-get install wrk failed: {done.stderr.strip()[-300:]}")
        found = shutil.which("wrk")
        if found:
            return found
    log(
        "wrk not found and not installable here (needs root and apt-get): install it (Debian/Ubuntu "
        "`apt-get install wrk`, macOS `brew install wrk`); the single-heartbeat phases fall back to the "
        "Python load generator, which bounds the ceiling by its own CPU (the report says so)"
    )
    return None


@dataclass(frozen=True, slots=True)
class WrkDevice:
    """One enrolled device as the Lua script uses it: its bucket k is at
    `start + 10 s * ((first + k) % limit) + offset`."""

    token: str
    start: datetime
    first: int
    limit: int
    offset_s: int

    def line(self) -> str:
        return f"{self.token} {int(self.start.timestamp())} {self.first} {self.limit} {self.offset_s}"


def _parse(stdout: str) -> dict[str, int]:
    for line in stdout.splitlines():
        if line.startswith("WRK_RESULT "):
            figures: dict[str, int] = json.loads(line.removeprefix("WRK_RESULT "))
            return figures
    raise RuntimeError(f"wrk printed no result:\n{stdout[-2000:]}")


def _run_wrk(argv: list[str], env: dict[str, str]) -> tuple[str, str, float, float]:
    """wrk's stdout, stderr, wall seconds and CPU seconds (its own rusage)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        return (
            out.read().decode(errors="replace"),
            err.read().decode(errors="replace"),
            wall,
            (usage.ru_utime + usage.ru_stime),
        )


async def closed_loop(
    base_url: str,
    *,
    wrk: str,
    devices: Sequence[WrkDevice],
    seconds: float,
    workers: int,
    tick: Tick | None = None,
    before_clock: Callable[[], None] | None = None,
    kind: str = "heartbeat",
    rate: float | None = None,
    expected_latency_s: float = 0.0,
) -> Run:
    """`workers` connections over `THREADS` wrk threads for `seconds`: back to back, or paced to
    offer about `rate` req/s (see the module docstring)."""
    env = dict(os.environ)
    mean_delay_ms = 0.0
    if rate is not None:
        mean_delay_ms = max(1000 * (workers / rate - expected_latency_s), 1.0)
        env["WRK_MEAN_DELAY_MS"] = f"{mean_delay_ms:.3f}"
    run = await _execute(
        wrk,
        SCRIPT,
        f"{base_url}/v1/heartbeats",
        [d.line() for d in devices],
        seconds=seconds,
        workers=workers,
        env=env,
        tick=tick,
        before_clock=before_clock,
        kind=kind,
    )
    run.offered_rate = rate
    if rate is not None:
        run.extra["wrk_mean_think_ms"] = round(mean_delay_ms, 3)
    return run


async def gets(
    base_url: str,
    *,
    wrk: str,
    paths: Sequence[str],
    headers: dict[str, str],
    seconds: float,
    workers: int,
    kind: str,
    tick: Tick | None = None,
    before_clock: Callable[[], None] | None = None,
) -> Run:
    """GET requests back to back on `workers` connections for `seconds`, each to a path drawn at
    random from `paths`, with `headers` (`wrk_gets.lua`)."""
    lines = [f"{name}: {value}" for name, value in headers.items()] + [""] + list(paths)
    return await _execute(
        wrk,
        GETS_SCRIPT,
        base_url,
        lines,
        seconds=seconds,
        workers=workers,
        env=dict(os.environ),
        tick=tick,
        before_clock=before_clock,
        kind=kind,
    )


async def _execute(
    wrk: str,
    script: Path,
    url: str,
    lines: Sequence[str],
    *,
    seconds: float,
    workers: int,
    env: dict[str, str],
    tick: Tick | None,
    before_clock: Callable[[], None] | None,
    kind: str,
) -> Run:
    """Run wrk with `script`, whose input file (its first argument) holds `lines`; the figures
    its done() prints become a `Run` with one summary, `kind`."""
    with tempfile.NamedTemporaryFile("w", suffix=".wrk-input", delete=False) as f:
        f.write("\n".join(lines) + "\n")
        input_file = f.name
    try:
        threads = min(THREADS, workers)  # one connection: one thread
        argv = [
            wrk,
            f"-t{threads}",
            f"-c{max(workers, threads)}",
            f"-d{max(round(seconds), 1)}s",
            "--timeout",
            "60s",
            "-s",
            str(script),
            url,
            "--",
            input_file,
            str(threads),
        ]
        if before_clock is not None:
            before_clock()
        task = asyncio.ensure_future(asyncio.to_thread(_run_wrk, argv, env))
        t0 = time.perf_counter()
        while not task.done():
            if tick is not None:
                tick(min(time.perf_counter() - t0, seconds))
            await asyncio.wait({task}, timeout=0.25)
        stdout, stderr, wall, cpu = task.result()
    finally:
        os.unlink(input_file)
    figures = _parse(stdout)
    elapsed = figures["duration_us"] / 1e6
    errors = {k: figures[k] for k in ("connect", "read", "write", "timeout") if figures[k]}
    statuses: Counter[str] = Counter({"2xx": figures["requests"] - figures["status"]})
    if figures["status"]:
        statuses["non-2xx"] = figures["status"]
    for k, n in errors.items():
        statuses[f"socket {k} error"] = n
    run = Run(Recorder(), connections=workers)
    run.elapsed = elapsed
    run.extra.update(
        generator="wrk",
        generator_cpu_s=round(cpu, 3),
        generator_wall_s=round(wall, 3),
        wrk_threads=threads,
        wrk_errors=errors,
    )
    if stderr.strip():
        print(stderr.strip()[-500:], file=sys.stderr)
    run.fixed[kind] = Summary(
        count=figures["requests"],
        ok=figures["requests"] - figures["status"],
        statuses=dict(statuses),
        p50_ms=figures["p50_us"] / 1000,
        p95_ms=figures["p95_us"] / 1000,
        p99_ms=figures["p99_us"] / 1000,
        max_ms=figures["max_us"] / 1000,
        rate=figures["requests"] / elapsed if elapsed > 0 else 0.0,
    )
    return run
