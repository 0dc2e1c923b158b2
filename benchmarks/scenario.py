"""One storage mode, end to end: database and service up, fleet enrolled, history pre-filled,
then every measured phase in a fixed order, then the baselines and the cleanup.

Phases (each bounded in time or requests):
  ceiling      trivial aiohttp handler, closed loop, C connections      → HTTP ceiling req/s
  saturation   service heartbeats, closed loop, C connections            → service req/s
(these two with wrk when it is installed, else the Python generator)
  fleet        N devices at their interval + dispatch/download/operator  → write p95 (target)
  half         service heartbeats offered at 50% of the ceiling (paced wrk) → goal: p95 ≤ 25 ms
  batched      batches of heartbeats, closed loop                        → ingest rows/s
  lookups      GET /v1/dispatches/{request_id}, closed loop              → lookup p95
  last100      GET /v1/devices/{id}/heartbeats?limit=100, closed loop    → query p95
(these two also with wrk when it is installed)
  overload     every connection posts a maximal batch                    → RSS, queue full
then raw COPY and per-row INSERT into the same table, cleanup against DELETE, and
  workers2     saturation against `serve --workers 2` (a second service) → req/s per worker count
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress

from benchmarks import baselines, cleanup, prefill, queries, writer_metrics
from benchmarks import wrk as wrk_driver
from benchmarks.baselines import Throughput
from benchmarks.cleanup import CleanupResult
from benchmarks.database import connect, storage_mode_of
from benchmarks.fleet import (
    BucketCursor,
    Device,
    Timeline,
    batch_body,
    bearer,
    device_id,
    dispatch_body,
    download_body,
    enroll,
    heartbeat_body,
    ingest_device_id,
)
from benchmarks.latency import Summary
from benchmarks.load import Request, Run, closed_loop, open_loop
from benchmarks.processes import ceiling_process, create_operator, service_process
from benchmarks.profiles import Profile
from benchmarks.resources import CpuMeter, MemorySampler, background_cpu_pct
from service.db.urls import asyncpg_dsn

FLEET_MIX = {
    "heartbeat": 90,
    "heartbeat_batch": 2,
    "dispatch_create": 2,
    "dispatch_lookup": 3,
    "last100": 1,
    "apk_download": 2,
}
FLEET_BATCH_ROWS = 20
OVERLOAD_BATCH_ROWS = 500  # the service's default TELEMETRY_MAX_BATCH_HEARTBEATS
WRITER_BATCH_ROWS = 5000  # the service's default TELEMETRY_BATCH_MAX_ROWS
QUIET_PCT = 20.0  # background CPU (percent of one core) below which a phase may start
QUIET_WAIT_S = 90.0


@dataclass
class Phase:
    name: str
    run: Run
    cpu: dict[str, Any]
    rss_peak_mb: float
    summaries: dict[str, Summary]

    def as_dict(self) -> dict[str, Any]:
        return {
            "run": self.run.as_dict(),
            "cpu": self.cpu,
            "rss_peak_mb": round(self.rss_peak_mb, 1),
            "requests": {k: v.as_dict() for k, v in self.summaries.items()},
        }


@dataclass
class ModeResult:
    mode: str
    versions: dict[str, Any] = field(default_factory=dict)
    setup: dict[str, Any] = field(default_factory=dict)
    phases: dict[str, Phase] = field(default_factory=dict)
    samples_ms: dict[str, list[float]] = field(default_factory=dict)
    sql: dict[str, Summary] = field(default_factory=dict)
    plans: dict[str, str] = field(default_factory=dict)
    batched: Throughput | None = None
    raw_copy: Throughput | None = None
    writer_sql: Throughput | None = None
    per_row_insert: Throughput | None = None
    cleanup: CleanupResult | None = None
    memory: dict[str, Any] = field(default_factory=dict)
    cpu_budget: dict[str, Any] = field(default_factory=dict)
    fleet_view: dict[str, Any] | None = None
    heartbeat_rows: int = 0
    service_exit_code: int | None = None
    wall_seconds: float = 0.0

    def phase_summary(self, phase: str, kind: str) -> Summary | None:
        p = self.phases.get(phase)
        return None if p is None else p.summaries.get(kind)

    def as_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "versions": self.versions,
            "setup": self.setup,
            "heartbeat_rows": self.heartbeat_rows,
            "phases": {k: v.as_dict() for k, v in self.phases.items()},
            "sql": {k: v.as_dict() for k, v in self.sql.items()},
            "batched_ingest": None if self.batched is None else self.batched.as_dict(),
            "raw_copy": None if self.raw_copy is None else self.raw_copy.as_dict(),
            "writer_sql": None if self.writer_sql is None else self.writer_sql.as_dict(),
            "per_row_insert": None if self.per_row_insert is None else self.per_row_insert.as_dict(),
            "cleanup": None if self.cleanup is None else self.cleanup.as_dict(),
            "memory": self.memory,
            "cpu_budget": self.cpu_budget,
            "fleet_view": self.fleet_view,
            "service_exit_code": self.service_exit_code,
            "wall_seconds": round(self.wall_seconds, 1),
            "query_plans": self.plans,
        }


class ModeRun:
    """Drives one mode. `database_url` must be a fresh, empty database (the service migrates it)."""

    def __init__(
        self,
        *,
        mode: str,
        database_url: str,
        profile: Profile,
        out_dir: Path,
        console: Console,
        progress: Progress,
        postmaster_pid: int | None = None,
        wrk: str | None = None,
    ) -> None:
        self.mode = mode
        self.wrk = wrk
        self.postmaster_pid = postmaster_pid
        self.url = database_url
        self.dsn = asyncpg_dsn(database_url)
        self.profile = profile
        self.out_dir = out_dir
        self.console = console
        self.progress = progress
        self.result = ModeResult(mode)
        self.rng = random.Random(1)
        self.timeline = Timeline(datetime.now(UTC), expired=timedelta(hours=profile.prefill_expired_hours))
        gap_buckets = int((self.timeline.t0 - self.timeline.gap_start).total_seconds() // 10) - 6
        self.gap = BucketCursor(self.timeline.gap_start, gap_buckets)
        ingest_buckets = int((self.timeline.gap_start - self.timeline.ingest_start).total_seconds() // 10)
        self.ingest = BucketCursor(self.timeline.ingest_start, ingest_buckets)
        self.devices: list[Device] = []
        self.ingest_devices: list[Device] = []
        self.operator: dict[str, str] = {}
        self.request_ids: list[str] = []
        self.service_url = ""
        self.service_pid: int | None = None
        self.stored = 0  # heartbeat rows the service answered as stored, in the current phase
        # Per-run names, so a database given with --database-url can be benchmarked again.
        self.tag = f"{random.SystemRandom().getrandbits(24):06x}"

    # -- helpers -------------------------------------------------------------------------------

    def log(self, text: str) -> None:
        self.console.log(f"[bold]{self.mode}[/bold] {text}")

    def _task(self, label: str, total: float) -> tuple[Callable[[float], None], Callable[[float], None], Any]:
        task = self.progress.add_task(f"{self.mode}: {label}", total=total)

        def tick(done: float) -> None:
            self.progress.update(task, completed=done)

        def advance(n: float) -> None:
            self.progress.advance(task, n)

        return tick, advance, task

    def _done(self, task: Any) -> None:
        self.progress.update(task, visible=False)

    async def _phase(
        self,
        name: str,
        label: str,
        driver: Callable[..., Any],
        *,
        server_pid: int | None,
        seconds: float,
        **kwargs: Any,
    ) -> Phase:
        await self._quiesce(label)
        meter = CpuMeter(server_pid, self.postmaster_pid)
        tick, _, task = self._task(label, seconds)
        before = await writer_metrics.snapshot(self.service_url)
        self.memory.reset()
        self.stored = 0
        run: Run = await driver(tick=tick, before_clock=meter.start, seconds=seconds, **kwargs)
        cpu = meter.stop(run.extra.get("generator_cpu_s", 0.0))
        self._done(task)
        run.extra.setdefault("generator", "python (aiohttp client)")
        run.extra["heartbeat_rows_stored"] = self.stored
        after = await writer_metrics.snapshot(self.service_url)
        if before is not None and after is not None and server_pid == self.service_pid:
            run.extra["writer"] = after.minus(before)
            if run.extra["generator"] == "wrk":  # wrk does not read bodies: the writer counts
                run.extra["heartbeat_rows_stored"] = run.extra["writer"]["heartbeat_rows_written"]
        phase = Phase(name, run, cpu.as_dict(), self.memory.peak_mb(), run.summaries())
        self.result.phases[name] = phase
        brief = ", ".join(
            f"{k} n={s.count} p95={s.p95_ms:.1f}ms"
            for k, s in phase.summaries.items()
            if s.p95_ms is not None
        )
        self.log(
            f"{name}: {brief} · cpu gen {cpu.generator:.0f}% srv {cpu.server:.0f}%"
            f" db {cpu.database:.0f}% other {cpu.other:.0f}%"
        )
        return phase

    async def _quiesce(self, label: str) -> None:
        """Wait (at most QUIET_WAIT_S) until the machine is quiet (PostgreSQL's background work,
        e.g. autovacuum after a write phase, and other processes), so that a phase is not measured
        while they hold a core; the waits are recorded."""
        t0 = time.perf_counter()
        other = await asyncio.to_thread(background_cpu_pct, self.postmaster_pid, self.service_pid)
        while other > QUIET_PCT and time.perf_counter() - t0 < QUIET_WAIT_S:
            other = await asyncio.to_thread(background_cpu_pct, self.postmaster_pid, self.service_pid)
        waited = time.perf_counter() - t0
        if waited > 2:
            self.log(f"waited {waited:.0f} s for other work on the machine to calm down before: {label}")
        self.result.setup.setdefault("quiet_waits_s", []).append(round(waited, 1))

    # -- traffic -------------------------------------------------------------------------------

    def _heartbeat_now(self, k: int) -> Request:
        dev = self.devices[k % len(self.devices)]
        return Request("heartbeat", "POST", "/v1/heartbeats", dev.headers, heartbeat_body(self.rng))

    def _heartbeat_in_gap(self, k: int) -> Request:
        """A single heartbeat in the device's next fresh bucket: stored, not absorbed."""
        dev = self.devices[k % len(self.devices)]
        (ts,) = self.gap.take(dev.device_id, 1)
        return Request(
            "heartbeat",
            "POST",
            "/v1/heartbeats",
            dev.headers,
            heartbeat_body(self.rng, ts),
            self._count_stored,
        )

    def _single_heartbeats(self, base_url: str, seconds: float) -> tuple[Callable[..., Any], dict[str, Any]]:
        """The driver and its arguments for a closed loop of single heartbeats in fresh buckets:
        wrk when installed (each device's buckets reserved from the gap cursor, so the Python
        phases never reuse them), else the Python generator."""
        p = self.profile
        if self.wrk is None:
            return closed_loop, {
                "base_url": base_url,
                "workers": p.connections,
                "traffic": self._heartbeat_in_gap,
            }
        # Enough buckets for 50 k req/s over the phase, at most a third of each device's gap.
        budget = min(int(50_000 * seconds / max(len(self.devices), 1)) + 1, self.gap.limit // 3)
        devices = [
            wrk_driver.WrkDevice(
                token=dev.headers["Authorization"].removeprefix("Bearer "),
                start=self.gap.start,
                first=self.gap.reserve(dev.device_id, budget),
                limit=self.gap.limit,
                offset_s=self.gap.offset_seconds(dev.device_id),
            )
            for dev in self.devices
        ]
        return wrk_driver.closed_loop, {
            "base_url": base_url,
            "wrk": self.wrk,
            "devices": devices,
            "workers": p.connections,
        }

    def _count_stored(self, status: int, body: bytes) -> None:
        if status == 200:
            self.stored += body.count(b'"stored":true')

    def _fleet_traffic(self) -> Callable[[int], Request]:
        pattern = [kind for kind, n in FLEET_MIX.items() for _ in range(n)]
        random.Random(2).shuffle(pattern)
        devices = self.devices
        prefilled = min(self.profile.prefill_devices, len(devices))

        def traffic(k: int) -> Request:
            kind = pattern[k % len(pattern)]
            dev = devices[k % len(devices)]
            if kind == "heartbeat":
                return Request(kind, "POST", "/v1/heartbeats", dev.headers, heartbeat_body(self.rng))
            if kind == "heartbeat_batch":
                stamps = self.gap.take(dev.device_id, FLEET_BATCH_ROWS)
                return Request(kind, "POST", "/v1/heartbeats", dev.headers, batch_body(self.rng, stamps))
            if kind == "apk_download":
                return Request(kind, "POST", "/v1/apk-downloads", dev.headers, download_body(self.rng))
            if kind == "dispatch_create":
                rid = f"fleet-{self.tag}-{k}"

                def remember(status: int, _: bytes, rid: str = rid) -> None:
                    if status == 201:
                        self.request_ids.append(rid)

                return Request(
                    kind, "POST", "/v1/dispatches", self.operator, dispatch_body(rid, dev.device_id), remember
                )
            if kind == "dispatch_lookup":
                return Request(
                    kind, "GET", f"/v1/dispatches/{self.rng.choice(self.request_ids)}", self.operator
                )
            target = devices[self.rng.randrange(max(prefilled, 1))]
            return Request(kind, "GET", f"/v1/devices/{target.device_id}/heartbeats?limit=100", self.operator)

        return traffic

    # -- the run -------------------------------------------------------------------------------

    async def run(self) -> ModeResult:
        started = time.perf_counter()
        service = service_process(self.url, self.mode, self.out_dir / "logs", self.out_dir / "service-data")
        self.log("starting the service (migrations run at start)")
        t = time.perf_counter()
        service.start()
        self.result.setup["service_start_s"] = round(time.perf_counter() - t, 2)
        self.service_url = service.base_url
        self.service_pid = service.pid
        self.memory = MemorySampler(service.pid, service.port)
        self.memory.start()
        try:
            await self._run_with(service.base_url, service.pid)
        finally:
            self.memory.close()
            self.result.service_exit_code = service.stop()
        self.result.wall_seconds = time.perf_counter() - started
        return self.result

    async def _run_with(self, base_url: str, pid: int) -> None:
        p = self.profile
        actual = await storage_mode_of(self.url)
        if self.mode == "auto":
            self.mode = self.result.mode = actual
        if actual != self.mode:
            raise RuntimeError(f"expected a {self.mode} database, the service made a {actual} one")
        await cleanup.pause_scheduled_retention(self.dsn, self.mode)
        self.operator = bearer(create_operator(self.url, f"bench-{int(time.time())}"))

        # Enrollment over the API.
        ids = [device_id(self.tag, i) for i in range(p.devices)]
        ids += [ingest_device_id(self.tag, i) for i in range(p.ingest_devices)]
        _, advance, task = self._task("enrolling devices", len(ids))
        t = time.perf_counter()
        enrolled = await enroll(base_url, self.operator, ids, advance=advance)
        self._done(task)
        self.result.setup["enrolled_devices"] = len(enrolled)
        self.result.setup["enroll_s"] = round(time.perf_counter() - t, 2)
        self.result.setup["enroll_per_s"] = round(len(enrolled) / (time.perf_counter() - t), 1)
        self.devices = enrolled[: p.devices]
        self.ingest_devices = enrolled[p.devices :]
        self.log(f"enrolled {len(enrolled)} devices in {self.result.setup['enroll_s']} s")

        await self._prefill()
        self.memory.reset()
        self.result.memory["after_setup_mb"] = round(self.memory.current_mb(), 1)

        # HTTP ceiling: the same requests against a trivial aiohttp handler in its own process.
        ceiling = ceiling_process(self.out_dir / "logs")
        ceiling.start()
        try:
            driver, kwargs = self._single_heartbeats(ceiling.base_url, p.ceiling_seconds)
            await self._phase(
                "ceiling",
                "HTTP ceiling (trivial aiohttp)",
                driver,
                server_pid=ceiling.pid,
                seconds=p.ceiling_seconds,
                **kwargs,
            )
        finally:
            ceiling.stop()
        driver, kwargs = self._single_heartbeats(base_url, p.ceiling_seconds)
        await self._phase(
            "saturation",
            "service heartbeats, closed loop",
            driver,
            server_pid=pid,
            seconds=p.ceiling_seconds,
            **kwargs,
        )
        rate = p.devices / p.heartbeat_interval * 100 / FLEET_MIX["heartbeat"]
        await self._phase(
            "fleet",
            f"fleet mix, {rate:.0f} req/s",
            open_loop,
            server_pid=pid,
            seconds=p.fleet_seconds,
            base_url=base_url,
            rate=rate,
            workers=p.connections,
            traffic=self._fleet_traffic(),
        )
        await self._half_ceiling(base_url, pid)
        await self._batched(base_url, pid)
        await self._queries(base_url, pid)
        await self._overload(base_url, pid)
        await self._baselines()
        await self._cleanup()
        # Last: the second service's maintenance round at start would drop the expired history
        # the cleanup phase measures.
        await self._workers_phase()
        self._cpu_budget()

    async def _half_ceiling(self, base_url: str, pid: int) -> None:
        """Single heartbeats offered at half the HTTP ceiling: paced wrk when installed (the
        Python generator cannot offer half of a wrk-measured ceiling), with enough connections
        that each one's mean think time is at least 40 ms; else the Python open loop."""
        p = self.profile
        rate = max(self.result.phases["ceiling"].summaries["heartbeat"].rate / 2, 1.0)
        label = f"heartbeats at 50% of ceiling ({rate:.0f} req/s)"
        if self.wrk is None:
            await self._phase(
                "half",
                label,
                open_loop,
                server_pid=pid,
                seconds=p.half_ceiling_seconds,
                base_url=base_url,
                rate=rate,
                workers=p.connections,
                traffic=self._heartbeat_in_gap,
            )
            return
        driver, kwargs = self._single_heartbeats(base_url, p.half_ceiling_seconds)
        fleet = self.result.phases["fleet"].summaries.get("heartbeat")
        kwargs["workers"] = max(p.connections, math.ceil(rate * 0.04))
        await self._phase(
            "half",
            label,
            driver,
            server_pid=pid,
            seconds=p.half_ceiling_seconds,
            rate=rate,
            expected_latency_s=(fleet.p50_ms or 0.0) / 1000 if fleet else 0.0,
            **kwargs,
        )

    async def _workers_phase(self) -> None:
        """Saturation again, against a second service started with `--workers 2` on the same
        database (the first one idles meanwhile): throughput per worker count."""
        p = self.profile
        second = service_process(
            self.url, self.mode, self.out_dir / "logs", self.out_dir / "service-data", workers=2
        )
        second.start()
        try:
            driver, kwargs = self._single_heartbeats(second.base_url, p.ceiling_seconds)
            phase = await self._phase(
                "workers2",
                "service heartbeats, closed loop, serve --workers 2",
                driver,
                server_pid=second.pid,
                seconds=p.ceiling_seconds,
                **kwargs,
            )
        finally:
            phase_exit = second.stop()
        phase.run.extra["service_exit_code"] = phase_exit

    def _cpu_budget(self) -> None:
        """Service CPU per 1,000 single heartbeats and per 1,000 batched rows, and the trivial
        handler's per 1,000 requests, from the processes' own CPU counters over each phase."""

        def per_1000(phase: str, count: float) -> float | None:
            ph = self.result.phases.get(phase)
            if ph is None or count <= 0:
                return None
            return round(1000 * ph.cpu["server_cpu_s"] / count, 4)

        def answered(phase: str, kind: str) -> float:
            s = self.result.phase_summary(phase, kind)
            return float(s.ok) if s is not None else 0.0

        batched_rows = self.result.batched.rows if self.result.batched is not None else 0
        budget: dict[str, Any] = {
            "trivial_cpu_s_per_1000_requests": per_1000("ceiling", answered("ceiling", "heartbeat")),
            "service_cpu_s_per_1000_single": per_1000("saturation", answered("saturation", "heartbeat")),
            "service_cpu_s_per_1000_batched_rows": per_1000("batched", batched_rows),
            "workers2_cpu_s_per_1000_single": per_1000("workers2", answered("workers2", "heartbeat")),
        }
        trivial = budget["trivial_cpu_s_per_1000_requests"]
        single = budget["service_cpu_s_per_1000_single"]
        budget["single_over_trivial"] = round(single / trivial, 3) if trivial and single else None
        sat = self.result.phases.get("saturation")
        stored = sat.run.extra.get("heartbeat_rows_stored", 0) if sat is not None else 0
        if sat is not None and stored:
            budget["service_cpu_us_per_stored_heartbeat"] = round(1e6 * sat.cpu["server_cpu_s"] / stored, 1)
            budget["database_cpu_us_per_stored_heartbeat"] = round(
                1e6 * sat.cpu["database_cpu_s"] / stored, 1
            )
        self.result.cpu_budget = budget

    async def _prefill(self) -> None:
        p = self.profile
        if self.mode == "postgres":
            async with connect(self.dsn) as conn:
                await prefill.ensure_old_partitions(conn, self.timeline)
        expected = prefill.heartbeat_row_count(self.timeline, p.prefill_devices, p.prefill_interval)
        _, advance, task = self._task("pre-fill (COPY)", expected)
        t = time.perf_counter()
        ids = [device_id(self.tag, i) for i in range(p.prefill_devices)]
        rows = await prefill.copy_heartbeats(
            self.dsn, self.timeline, ids, p.prefill_interval, advance=advance
        )
        copy_s = time.perf_counter() - t
        self._done(task)
        t = time.perf_counter()
        self.request_ids = await prefill.copy_dispatches(
            self.dsn, self.timeline, ids, p.prefill_dispatches_per_device, self.tag
        )
        dispatch_s = time.perf_counter() - t
        t = time.perf_counter()
        await prefill.analyze(self.dsn)
        vacuum_s = time.perf_counter() - t
        async with connect(self.dsn) as conn:
            self.result.heartbeat_rows = int(await conn.fetchval("SELECT count(*) FROM device_heartbeats"))
            size = await conn.fetchval(
                "SELECT pg_size_pretty(hypertable_size('device_heartbeats'))"
                if self.mode == "timescale"
                else "SELECT pg_size_pretty(sum(pg_total_relation_size(inhrelid))) FROM pg_inherits"
                " WHERE inhparent = 'device_heartbeats'::regclass"
            )
        self.result.setup.update(
            prefill_heartbeat_rows=rows,
            prefill_copy_s=round(copy_s, 1),
            prefill_rows_per_s=round(rows / copy_s, 0),
            prefill_dispatches=len(self.request_ids),
            prefill_dispatch_s=round(dispatch_s, 1),
            vacuum_analyze_s=round(vacuum_s, 1),
            heartbeat_table_size=size,
            history_start=self.timeline.history_start.isoformat(),
            history_end=self.timeline.gap_start.isoformat(),
        )
        self.log(
            f"pre-filled {rows:,} heartbeats in {copy_s:.1f} s ({rows / copy_s:,.0f} rows/s), "
            f"{len(self.request_ids):,} dispatches; VACUUM ANALYZE {vacuum_s:.1f} s; table {size}"
        )

    async def _batched(self, base_url: str, pid: int) -> None:
        p = self.profile
        stored = 0

        def count(status: int, body: bytes) -> None:
            nonlocal stored
            if status == 200:
                stored += body.count(b'"stored":true')

        def traffic(k: int) -> Request:
            dev = self.ingest_devices[k % len(self.ingest_devices)]
            stamps = self.ingest.take(dev.device_id, p.batch_size)
            return Request(
                "heartbeat_batch", "POST", "/v1/heartbeats", dev.headers, batch_body(self.rng, stamps), count
            )

        phase = await self._phase(
            "batched",
            f"batched ingest ({p.batch_size} rows/request)",
            closed_loop,
            server_pid=pid,
            seconds=p.batch_seconds,
            base_url=base_url,
            workers=p.batch_connections,
            traffic=traffic,
        )
        self.result.batched = Throughput(stored, phase.run.elapsed)
        phase.run.extra["rows_stored"] = stored
        self.log(f"batched ingest: {self.result.batched.rows_per_s:,.0f} rows/s stored")

    async def _queries(self, base_url: str, pid: int) -> None:
        """Dispatch lookups and last-100 reads, each alone on `query_connections` connections:
        with wrk when installed (for `query_requests / 500` s, at least 2 s), else the Python
        client for `query_requests` requests."""
        p = self.profile
        prefilled = [d for d in self.devices[: p.prefill_devices]]
        ids = list(self.request_ids)
        rng = random.Random(4)
        phases = (
            ("lookups", "dispatch lookups", "dispatch_lookup", [f"/v1/dispatches/{i}" for i in ids]),
            (
                "last100",
                "last-100 heartbeats",
                "last100",
                [f"/v1/devices/{d.device_id}/heartbeats?limit=100" for d in prefilled],
            ),
        )
        for name, label, kind, paths in phases:
            if self.wrk is not None:
                seconds = max(2.0, p.query_requests / 500)
                await self._phase(
                    name,
                    label,
                    wrk_driver.gets,
                    server_pid=pid,
                    seconds=seconds,
                    base_url=base_url,
                    wrk=self.wrk,
                    paths=paths,
                    headers=self.operator,
                    workers=p.query_connections,
                    kind=kind,
                )
                continue
            await self._phase(
                name,
                label,
                closed_loop,
                server_pid=pid,
                seconds=120.0,
                base_url=base_url,
                workers=p.query_connections,
                max_requests=p.query_requests,
                traffic=lambda k, kind=kind, paths=paths: Request(
                    kind, "GET", rng.choice(paths), self.operator
                ),
            )
        self.result.sql, samples = await queries.time_queries(
            self.dsn, ids, [d.device_id for d in prefilled], p.sql_samples
        )
        self.result.samples_ms.update(samples)
        self.result.plans = await queries.explain(self.dsn, ids[0], prefilled[0].device_id)
        for name, s in self.result.sql.items():
            self.log(f"{name}: p50 {s.p50_ms:.3f} ms p95 {s.p95_ms:.3f} ms p99 {s.p99_ms:.3f} ms")

    async def _overload(self, base_url: str, pid: int) -> None:
        p = self.profile
        bodies = [
            (dev.headers, batch_body(self.rng, self.ingest.take(dev.device_id, OVERLOAD_BATCH_ROWS)))
            for dev in self.ingest_devices
        ]
        queue_full = 0

        def count(status: int, body: bytes) -> None:
            nonlocal queue_full
            if status == 503 and b"queue_full" in body:
                queue_full += 1

        def traffic(k: int) -> Request:
            headers, body = bodies[k % len(bodies)]
            return Request("overload_batch", "POST", "/v1/heartbeats", headers, body, count)

        self.memory.count_connections = True
        phase = await self._phase(
            "overload",
            f"overload ({p.overload_connections} x {OVERLOAD_BATCH_ROWS}-row batches)",
            closed_loop,
            server_pid=pid,
            seconds=p.overload_seconds,
            base_url=base_url,
            workers=p.overload_connections,
            traffic=traffic,
        )
        self.memory.count_connections = False
        phase.run.extra["queue_full_503"] = queue_full
        refused = phase.run.recorder.refused_summary("overload_batch", phase.run.elapsed)
        if refused is not None:
            phase.summaries["overload_batch_503"] = refused
        self.result.memory.update(
            overload_peak_mb=round(self.memory.peak_mb(), 1),
            overload_peak_connections=self.memory.peak_connections(),
            overload_queue_full_503=queue_full,
            peak_mb=round(max(ph.rss_peak_mb for ph in self.result.phases.values()), 1),
        )
        self.log(
            f"overload: RSS peak {self.memory.peak_mb():.0f} MB with"
            f" {self.memory.peak_connections()} connections,"
            f" {queue_full} x 503 queue_full"
        )

    async def _baselines(self) -> None:
        p = self.profile
        requests = max(p.copy_rows // p.batch_size, 1)
        cursor = BucketCursor(self.timeline.ingest_start, self.ingest.limit)
        rows = baselines.ingest_like_rows(
            f"copy-{self.tag}", p.ingest_devices, requests, p.batch_size, cursor
        )
        _, advance, task = self._task("raw COPY baseline", len(rows))
        self.result.raw_copy = await baselines.raw_copy(
            self.dsn, rows, batch=WRITER_BATCH_ROWS, advance=advance
        )
        self._done(task)
        self.log(f"raw COPY: {self.result.raw_copy.rows_per_s:,.0f} rows/s")
        cursor = BucketCursor(self.timeline.ingest_start, self.ingest.limit)
        rows = baselines.ingest_like_rows(
            f"merge-{self.tag}", p.ingest_devices, max(requests // 2, 1), p.batch_size, cursor
        )
        _, advance, task = self._task("writer SQL alone", len(rows))
        self.result.writer_sql = await baselines.writer_sql(
            self.dsn, rows, batch=WRITER_BATCH_ROWS, advance=advance
        )
        self._done(task)
        self.log(f"writer SQL alone: {self.result.writer_sql.rows_per_s:,.0f} rows/s")
        cursor = BucketCursor(self.timeline.ingest_start, self.ingest.limit)
        budget = int(p.insert_seconds * 20_000)
        rows = baselines.ingest_like_rows(
            f"insert-{self.tag}", p.ingest_devices, max(budget // p.batch_size, 1), p.batch_size, cursor
        )
        tick, _, task = self._task("per-row INSERT baseline", p.insert_seconds)
        self.result.per_row_insert = await baselines.per_row_insert(
            self.dsn, rows, seconds=p.insert_seconds, connections=p.insert_connections, advance=tick
        )
        self._done(task)
        self.log(f"per-row INSERT: {self.result.per_row_insert.rows_per_s:,.0f} rows/s")

    async def _cleanup(self) -> None:
        self.result.cleanup = await cleanup.measure(self.dsn, self.url, self.mode)
        c = self.result.cleanup
        self.log(
            f"cleanup ({c.method}): {c.cleanup_seconds:.3f} s for {c.expired_rows:,} rows"
            f" in {c.chunks_dropped} chunks; DELETE + VACUUM {c.delete_job_seconds or 0:.2f} s;"
            f" left {c.rows_left_after}"
        )
