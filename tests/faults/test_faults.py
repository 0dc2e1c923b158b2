"""Fault runs (marker `slow`; `scripts/faults` runs them): database SIGKILL and restart, SIGTERM
under load, a stalled database, two instances on one database. Each run puts the fleet on the
service, injects the fault, and then checks the guarantees of ARCHITECTURE.md against the table:
every acknowledged heartbeat is stored, no request hung, the service recovered by itself.
Figures go to stdout and to benchmarks/out/faults.txt."""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from benchmarks.processes import ListeningProcess, create_operator
from service.settings import Settings
from tests.faults.harness import (
    DEVICES,
    FaultCluster,
    Fleet,
    log_of,
    metric_sum,
    missing_acks,
    report,
    rss_mb,
    scrape,
    service,
    serving,
    sockets_on,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster() -> Iterator[FaultCluster]:
    c = FaultCluster()
    try:
        yield c
    finally:
        c.close()


@pytest.fixture(params=["postgres", "timescale"])
def fault_mode(request: pytest.FixtureRequest, cluster: FaultCluster) -> str:
    if request.param == "timescale" and not cluster.timescale_available:
        pytest.skip("timescale mode skipped: TimescaleDB cannot be loaded by this PostgreSQL server")
    return str(request.param)


@pytest.fixture
async def database(cluster: FaultCluster) -> str:
    return await cluster.fresh_database(f"f_{uuid.uuid4().hex[:10]}")


@dataclass(frozen=True, slots=True)
class Sigterm:
    at: float
    exit_code: int | None
    stopped_in: float


async def sigterm(svc: ListeningProcess, probe: asyncio.Task[Any], fleet: Fleet) -> Sigterm:
    """SIGTERM while the probe's open-loop requests are under way; waits for the exit."""
    at = time.monotonic()
    code = await asyncio.to_thread(svc.stop)
    stopped_in = time.monotonic() - at
    await probe
    await fleet.stop()
    return Sigterm(at, code, stopped_in)


@dataclass(frozen=True, slots=True)
class Drained:
    log: str


async def drained_after(
    term: Sigterm, database: str, fleet: Fleet, tmp_path: Path, name: str, **figures: object
) -> Drained:
    """Reports and checks what a drain under SIGTERM guarantees: exit 0, every acknowledged
    heartbeat stored, no request hung, and each request sent before SIGTERM but answered after it
    got a 2xx (its row stored) or an error, never silence and never a 500."""
    missing = await missing_acks(database, fleet.acked)
    straddling = [o for o in fleet.outcomes if o.sent_at < term.at <= o.answered_at]
    after = fleet.statuses(term.at)
    report(
        name,
        **figures,
        acked=len(fleet.acked),
        missing=missing,
        stopped_in_s=round(term.stopped_in, 2),
        in_flight_at_sigterm=len(straddling),
        their_statuses=dict(Counter(str(o.status) for o in straddling)),
        statuses_after_sigterm=dict(after),
        exit_code=term.exit_code,
    )
    assert term.exit_code == 0
    assert missing == 0
    assert not fleet.hung()
    assert straddling, "no request was in flight at SIGTERM"
    assert all(o.status in (200, 503) or isinstance(o.status, str) for o in straddling)
    assert "500" not in after
    return Drained(log_of(tmp_path, "service"))


async def test_database_sigkill_and_restart_under_load(
    cluster: FaultCluster, database: str, fault_mode: str, tmp_path: Path
) -> None:
    async with serving(database, fault_mode, tmp_path, "kill") as (svc, fleet):
        await asyncio.sleep(4)
        killed_at = time.monotonic()
        await asyncio.to_thread(cluster.kill9)
        await asyncio.sleep(2)
        await asyncio.to_thread(cluster.restart)
        up_at = time.monotonic()
        await asyncio.sleep(8)
        await fleet.stop()
        metrics = await scrape(svc.base_url)
        assert svc.proc is not None and svc.proc.poll() is None, "the service must survive the outage"
    code = svc.proc.returncode
    missing = await missing_acks(database, fleet.acked)
    first_ok = fleet.first_success_after(up_at)
    assert first_ok is not None, fleet.statuses(up_at)
    recovery = first_ok - up_at
    failed = metric_sum(metrics, "telemetry_failed_writes_total")
    retries = metric_sum(metrics, "telemetry_flush_retries_total")
    during = fleet.statuses(killed_at, up_at + recovery)
    after = fleet.statuses(up_at + recovery + 1)
    report(
        f"sigkill[{fault_mode}]",
        acked=len(fleet.acked),
        missing=missing,
        recovery_after_restart_s=round(recovery, 2),
        first_2xx_after_kill_s=round(first_ok - killed_at, 2),
        statuses_during_outage=dict(during),
        failed_writes_metric=failed,
        flush_retries_metric=retries,
        exit_code=code,
    )
    assert missing == 0
    assert not fleet.hung()
    assert recovery < 10
    assert set(after) == {"200"}, after
    assert "500" not in during and all(s.startswith("503") for s in during if s != "200"), during
    assert failed + retries > 0  # the outage shows in the metrics
    assert code == 0


async def test_sigterm_under_load_drains_and_acknowledges_only_commits(
    database: str, fault_mode: str, tmp_path: Path
) -> None:
    async with serving(database, fault_mode, tmp_path, "term") as (svc, fleet):
        await asyncio.sleep(3)
        # The closed-loop devices are answered together by one group commit, so there are
        # moments with none of them in flight: open-loop traffic makes sure some requests are
        # under way when SIGTERM lands.
        probe = asyncio.create_task(fleet.open_loop(rate=300, seconds=2))
        await asyncio.sleep(1)
        term = await sigterm(svc, probe, fleet)
    drained = await drained_after(term, database, fleet, tmp_path, f"sigterm[{fault_mode}]")
    assert "drained; closing database pool" in drained.log and "stopped" in drained.log


async def test_two_workers_share_one_port_and_sigterm_drains_both(
    database: str, fault_mode: str, tmp_path: Path
) -> None:
    """`serve --workers 2`: both workers listen on the one port and take connections; SIGTERM
    under load drains both, and every acknowledged heartbeat is stored."""
    async with serving(database, fault_mode, tmp_path, "workers", workers=2) as (svc, fleet):
        await asyncio.sleep(3)
        listening = {pid: s for pid, s in sockets_on(svc.pid, svc.port).items() if s["LISTEN"]}
        probe = asyncio.create_task(fleet.open_loop(rate=300, seconds=2))
        await asyncio.sleep(1)
        sockets = sockets_on(svc.pid, svc.port)
        served = {pid: sockets.get(pid, Counter())["ESTABLISHED"] for pid in listening}
        term = await sigterm(svc, probe, fleet)
    drained = await drained_after(
        term,
        database,
        fleet,
        tmp_path,
        f"workers[{fault_mode}]",
        workers_listening=len(listening),
        connections_per_worker=sorted(served.values()),
    )
    assert len(listening) == 2, sockets_on
    assert all(n > 0 for n in served.values()), served
    assert len(fleet.acked) > 100
    log = drained.log
    assert log.count("drained; closing database pool") == 2, log[-3000:]
    assert "stopped 2 workers (exit codes [0, 0])" in log


@pytest.mark.parametrize("stall", [6, 14])
async def test_stalled_database_sheds_load_fast_and_recovers(
    cluster: FaultCluster, database: str, fault_mode: str, tmp_path: Path, stall: float
) -> None:
    """A 6 s stall ends before the pool's 10 s command timeout; a 14 s one outlasts it and the
    10 s commit wait, so flushes time out, are retried, and waiting callers get 503."""
    async with serving(database, fault_mode, tmp_path, "stall", TELEMETRY_STALL_SECONDS="1") as (svc, fleet):
        await asyncio.sleep(3)
        rss_before = rss_mb(svc.pid)
        stopped_at = time.monotonic()
        cluster.sigstop()
        peak_rss, peak_queue = rss_before, 0.0

        async def watch() -> None:
            nonlocal peak_rss, peak_queue
            while True:
                await asyncio.sleep(0.25)
                peak_rss = max(peak_rss, rss_mb(svc.pid))
                peak_queue = max(peak_queue, (await scrape(svc.base_url))["telemetry_write_queue_rows"])

        watcher = asyncio.create_task(watch())
        try:
            # Besides the 40 closed-loop devices (whose requests now wait), the rest of a large
            # fleet keeps sending: 200 requests/s regardless of answers.
            probe = asyncio.create_task(fleet.open_loop(rate=200, seconds=stall))
            await asyncio.sleep(stall)
        finally:
            cluster.sigcont()
            resumed_at = time.monotonic()
        await probe
        watcher.cancel()
        await asyncio.sleep(5)
        await fleet.stop()
        metrics = await scrape(svc.base_url)
    code = svc.proc.returncode
    missing = await missing_acks(database, fleet.acked)
    # Requests sent once the stall was detectable (stall threshold 1 s) until the resume.
    shed = [o for o in fleet.outcomes if stopped_at + 1.5 <= o.sent_at < resumed_at and o.status == 503]
    shed_ms = sorted((o.answered_at - o.sent_at) * 1000 for o in shed)
    first_ok = fleet.first_success_after(resumed_at)
    assert first_ok is not None
    recovery = first_ok - resumed_at
    report(
        f"sigstop-{stall}s[{fault_mode}]",
        acked=len(fleet.acked),
        missing=missing,
        stall_s=round(resumed_at - stopped_at, 1),
        answered_503_during_stall=len(shed),
        p50_503_ms=round(statistics.median(shed_ms), 1) if shed_ms else None,
        p95_503_ms=round(shed_ms[int(len(shed_ms) * 0.95) - 1], 1) if shed_ms else None,
        rss_before_mb=round(rss_before, 1),
        rss_peak_mb=round(peak_rss, 1),
        queue_rows_peak=peak_queue,
        recovery_after_resume_s=round(recovery, 2),
        statuses_during_stall=dict(fleet.statuses(stopped_at, resumed_at)),
        shed_requests_metric=metric_sum(metrics, "telemetry_shed_requests_total"),
    )
    assert missing == 0
    assert not fleet.hung()
    assert len(shed) > 100
    assert shed_ms[int(len(shed_ms) * 0.95) - 1] < 100
    assert peak_rss - rss_before < 50
    assert peak_queue <= Settings().queue_max_rows
    assert recovery < 5
    assert code == 0


async def test_two_instances_on_one_database(
    cluster: FaultCluster, database: str, fault_mode: str, tmp_path: Path
) -> None:
    """Both start at once (both migrate under the advisory lock); the fleet sends every device's
    heartbeats alternately to each; a burst of dispatches sends each request_id to both."""
    a = service(database, fault_mode, tmp_path, name="a")
    b = service(database, fault_mode, tmp_path, name="b")
    await asyncio.gather(asyncio.to_thread(a.start), asyncio.to_thread(b.start))
    try:
        fleet = await Fleet.enrolled([a.base_url, b.base_url], database, DEVICES, "pair")
        fleet.run()
        token = await asyncio.to_thread(create_operator, database, "pair-op")
        headers = {"Authorization": f"Bearer {token}"}
        ids: dict[str, set[int]] = {}
        statuses: list[int] = []
        stored_pairs: list[tuple[bool, ...]] = []
        async with aiohttp.ClientSession() as session:

            async def send(base: str, rid: str, device: str) -> None:
                body = {"request_id": rid, "device_id": device, "action": "sync", "payload": {"n": 1}}
                async with session.post(f"{base}/v1/dispatches", json=body, headers=headers) as r:
                    statuses.append(r.status)
                    ids.setdefault(rid, set()).add((await r.json())["id"])

            async def heartbeat(base: str, index: int, ts: datetime) -> bool:
                device = fleet.devices[index]
                body = {"ts": ts.isoformat(), "status": "ok", "battery_pct": 42}
                async with session.post(f"{base}/v1/heartbeats", json=body, headers=device.headers) as r:
                    assert r.status == 200, await r.text()
                    return bool((await r.json())["results"][0]["stored"])

            # The same (device, bucket) sent to both instances at once: exactly one stores it.
            for round_ in range(5):
                ts = fleet.start + timedelta(hours=12, seconds=10 * round_ + 3)
                pairs = await asyncio.gather(
                    *(
                        asyncio.gather(heartbeat(a.base_url, i, ts), heartbeat(b.base_url, i, ts))
                        for i in range(len(fleet.devices))
                    )
                )
                stored_pairs += [tuple(p) for p in pairs]

            for round_ in range(10):
                await asyncio.gather(
                    *(
                        send(base, f"pair-{round_}-{i}", fleet.devices[i].device_id)
                        for i in range(20)
                        for base in (a.base_url, b.base_url, a.base_url, b.base_url)
                    )
                )
        await asyncio.sleep(3)
        await fleet.stop()
    finally:
        codes = await asyncio.gather(asyncio.to_thread(a.stop), asyncio.to_thread(b.stop))
    conn = await asyncpg.connect(database)
    try:
        dup_dispatches = await conn.fetchval(
            "SELECT count(*) FROM (SELECT request_id FROM fcm_dispatches GROUP BY 1 HAVING count(*) > 1) d"
        )
        dispatch_rows = await conn.fetchval("SELECT count(*) FROM fcm_dispatches")
        dup_buckets = await conn.fetchval(
            "SELECT count(*) FROM (SELECT device_id, bucket_start FROM device_heartbeats"
            " GROUP BY 1, 2 HAVING count(*) > 1) d"
        )
    finally:
        await conn.close()
    missing = await missing_acks(database, fleet.acked)
    logs = log_of(tmp_path, "a") + log_of(tmp_path, "b")
    report(
        f"two-instances[{fault_mode}]",
        acked=len(fleet.acked),
        missing=missing,
        same_bucket_pairs=len(stored_pairs),
        pairs_with_exactly_one_stored=sum(sum(p) == 1 for p in stored_pairs),
        dispatch_requests=len(statuses),
        dispatch_rows=dispatch_rows,
        duplicate_request_ids=dup_dispatches,
        duplicate_buckets=dup_buckets,
        created_201=statuses.count(201),
        replayed_200=statuses.count(200),
        exit_codes=list(codes),
    )
    assert dup_dispatches == 0 and dup_buckets == 0
    assert len(stored_pairs) == 200 and all(sum(p) == 1 for p in stored_pairs)
    assert dispatch_rows == 200 and statuses.count(201) == 200 and statuses.count(200) == 600
    assert all(len(v) == 1 for v in ids.values())
    assert missing == 0
    assert fleet.statuses() == {"200": len(fleet.outcomes)}
    assert "ERROR" not in logs and "Traceback" not in logs
    assert codes == [0, 0]
