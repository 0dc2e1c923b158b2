"""The load generator: aiohttp clients driving the service over real HTTP on 127.0.0.1.

Two drivers, both bounded in time (every phase stops by itself, and every request has a
timeout):

* `open_loop`: requests are due at a fixed rate (request k at start + k / rate), whatever
  the latency; `workers` coroutines, one connection each, take the next due request. When all
  of them are busy, requests go out late; the lag is measured and reported, so a figure taken
  while the generator could not keep the schedule says so.
* `closed_loop`: every worker sends its next request as soon as the previous one is answered
  (saturation), until the phase's time or request budget is spent.

Latency is measured per request from the call into the client to the last byte of the body.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np

from benchmarks.latency import Recorder, Summary

Responder = Callable[[int, bytes], None]


@dataclass(frozen=True, slots=True)
class Request:
    kind: str
    method: str
    path: str
    headers: dict[str, str]
    body: bytes | None = None
    on_response: Responder | None = None


@dataclass
class Run:
    """What a driver observed, besides the per-request latencies in `recorder`."""

    recorder: Recorder
    elapsed: float = 0.0
    offered_rate: float | None = None
    late: int = 0
    lag_p95_ms: float | None = None
    max_in_flight: int = 0
    connections: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    # Summaries a generator computed itself (wrk): used instead of the recorder's.
    fixed: dict[str, Summary] = field(default_factory=dict)

    def summaries(self) -> dict[str, Summary]:
        return dict(self.fixed) if self.fixed else self.recorder.summaries(self.elapsed)

    def as_dict(self) -> dict[str, Any]:
        return {
            "elapsed_s": round(self.elapsed, 3),
            "offered_rate": self.offered_rate,
            "late_requests": self.late,
            "schedule_lag_p95_ms": self.lag_p95_ms,
            "max_in_flight": self.max_in_flight,
            "connections": self.connections,
            **self.extra,
        }


Tick = Callable[[float], None]


def _session(base_url: str, workers: int) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=workers, limit_per_host=workers, keepalive_timeout=300)
    return aiohttp.ClientSession(
        base_url, connector=connector, timeout=aiohttp.ClientTimeout(total=60), auto_decompress=False
    )


async def _warm(session: aiohttp.ClientSession, workers: int) -> None:
    """Open `workers` connections before the clock starts (all requests in flight at once)."""

    async def one() -> None:
        async with session.get("/health/live") as resp:
            await resp.read()

    await asyncio.gather(*(one() for _ in range(workers)), return_exceptions=True)


class _Sender:
    def __init__(self, session: aiohttp.ClientSession, run: Run) -> None:
        self.session = session
        self.run = run
        self.in_flight = 0

    async def send(self, request: Request) -> None:
        self.in_flight += 1
        self.run.max_in_flight = max(self.run.max_in_flight, self.in_flight)
        started = time.perf_counter()
        status: int | str
        try:
            async with self.session.request(
                request.method, request.path, data=request.body, headers=request.headers
            ) as resp:
                body = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            status, body = type(exc).__name__, b""
        finally:
            self.in_flight -= 1
        self.run.recorder.record(request.kind, time.perf_counter() - started, status)
        if request.on_response is not None and isinstance(status, int):
            request.on_response(status, body)


async def _bounded(workers: list[Any], seconds: float) -> None:
    """Wait for the workers; cancel whatever is still running `seconds` + 70 s later (a request
    times out after 60 s, so this only fires if something is badly wrong)."""
    tasks = [asyncio.ensure_future(w) for w in workers]
    try:
        await asyncio.wait(tasks, timeout=seconds + 70)
    finally:
        # Also when the run itself is cancelled (SIGINT/SIGTERM): no worker outlives its session.
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in tasks:
        error = None if task.cancelled() else task.exception()
        if error is not None:
            raise error


async def _ticker(tick: Tick | None, seconds: float, stop: asyncio.Event) -> None:
    if tick is None:
        return
    started = time.perf_counter()
    while not stop.is_set():
        tick(min(time.perf_counter() - started, seconds))
        try:
            await asyncio.wait_for(stop.wait(), 0.25)
        except TimeoutError:
            pass
    tick(seconds)


async def _timed_workers(workers: list[Any], seconds: float, tick: Tick | None) -> float:
    """Runs the workers (bounded, as `_bounded`) with the progress ticker; the seconds they took."""
    stop = asyncio.Event()
    ticker = asyncio.ensure_future(_ticker(tick, seconds, stop))
    t0 = time.perf_counter()
    try:
        await _bounded(workers, seconds)
    finally:
        stop.set()
        await ticker
    return time.perf_counter() - t0


async def open_loop(
    base_url: str,
    *,
    rate: float,
    seconds: float,
    workers: int,
    traffic: Callable[[int], Request],
    tick: Tick | None = None,
    before_clock: Callable[[], None] | None = None,
) -> Run:
    """Request k is due at start + k / rate, for k while that is before start + seconds. None
    is sent after start + seconds + 1 s: when the rate is past what the generator or the server
    can do, the phase still ends on time; the requests left unsent are counted (`not_sent`)."""
    run = Run(Recorder(), offered_rate=rate, connections=workers)
    lags: list[float] = []
    async with _session(base_url, workers) as session:
        await _warm(session, workers)
        if before_clock is not None:
            before_clock()
        sender = _Sender(session, run)
        counter = itertools.count()
        loop = asyncio.get_running_loop()
        start = loop.time()
        end = start + seconds

        sent = 0

        async def worker() -> None:
            nonlocal sent
            for k in counter:
                due = start + k / rate
                if due >= end or loop.time() >= end + 1.0:
                    return
                sent += 1
                delay = due - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                else:
                    lags.append(-delay)
                await sender.send(traffic(k))

        run.elapsed = await _timed_workers([worker() for _ in range(workers)], seconds, tick)
    late = [lag for lag in lags if lag > 0.005]
    run.late = len(late)
    run.extra["not_sent"] = max(int(rate * seconds) - sent, 0)
    run.lag_p95_ms = float(np.percentile(np.asarray(lags) * 1000, 95)) if lags else 0.0
    return run


async def closed_loop(
    base_url: str,
    *,
    seconds: float,
    workers: int,
    traffic: Callable[[int], Request],
    max_requests: int | None = None,
    tick: Tick | None = None,
    before_clock: Callable[[], None] | None = None,
) -> Run:
    """Each worker sends back to back until `seconds` have passed or `max_requests` were sent."""
    run = Run(Recorder(), connections=workers)
    async with _session(base_url, workers) as session:
        await _warm(session, workers)
        if before_clock is not None:
            before_clock()
        sender = _Sender(session, run)
        counter = itertools.count()
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            for k in counter:
                if (max_requests is not None and k >= max_requests) or time.perf_counter() >= deadline:
                    return
                await sender.send(traffic(k))

        run.elapsed = await _timed_workers([worker() for _ in range(workers)], seconds, tick)
    return run
