"""What writing events costs the heartbeat path (issue 23): the same work with the event log in
and out, alternated, per storage mode.

* Batched ingest: the writer's flush of 5,000 heartbeats (staging COPY, merge, presence, COMMIT)
  on one connection, in two shapes: `backlog` (10 devices x 500 rows, as the batched-ingest
  phase sends) and `fleet` (5,000 devices x 1 row). Every device beats inside its deadline, the
  normal case: the log costs what its statement costs when nothing changes. A third shape,
  `back online` (5,000 devices past their deadline, so each flush writes 10,000 events: the
  went_offline the pass had not yet recorded and the came_online), shows the worst case.
* Single heartbeats over HTTP: wrk (closed loop, `--connections`) against the service in this
  process, `--pairs` runs of `--seconds` each way, alternated, each request a fresh bucket of one
  of `--http-devices` enrolled devices; requests/s and latency as wrk reports them, and wrk's
  own CPU (it must not be the bottleneck).

"Events off" is `service.fleet.presence.UPDATE_PRESENCE_WITHOUT_EVENTS`: the presence statement
without its `transitions` CTE, swapped in for the off runs only; nothing else differs. Heartbeats
write no other event.

    .venv/bin/python -m benchmarks.event_cost [--reps 20] [--pairs 3] [--seconds 10]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from benchmarks import fleet, standalone
from benchmarks import wrk as wrk_driver
from benchmarks.database import EmbeddedCluster, in_process_service, migrated_database
from benchmarks.fleet_view import _DEVICES, _PRESENCE
from benchmarks.report import Bound
from service.admin import create_operator
from service.app import ROW_STAGES
from service.fleet import presence
from service.ingest.connection import prepare_connection
from service.ingest.heartbeats import HeartbeatRow, merge_heartbeats
from service.settings import PresencePolicy, StorageMode

VARIANTS = ("on", "off")
SHAPES = ("backlog", "fleet", "back online")
BUCKETS_PER_RUN = 200  # fresh 10 s buckets each device may use in one HTTP run

TARGETS: tuple[tuple[str, Bound, Any], ...] = (
    (
        "batched ingest (fleet flush): events on / off",
        Bound("<=", 1.05, "x"),
        lambda r: r["flush_ms"]["fleet"]["on"] / r["flush_ms"]["fleet"]["off"],
    ),
    (
        "batched ingest (backlog flush): events on / off",
        Bound("<=", 1.05, "x"),
        lambda r: r["flush_ms"]["backlog"]["on"] / r["flush_ms"]["backlog"]["off"],
    ),
    (
        "single heartbeats over HTTP: requests/s off / on",
        Bound("<=", 1.05, "x"),
        lambda r: r["http"]["off"]["rate"] / r["http"]["on"]["rate"],
    ),
)


@contextlib.contextmanager
def events(variant: str) -> Iterator[None]:
    """The presence statement with (`on`) or without (`off`) its events, for the block."""
    kept = presence.UPDATE_PRESENCE
    if variant == "off":
        presence.UPDATE_PRESENCE = presence.UPDATE_PRESENCE_WITHOUT_EVENTS
    try:
        yield
    finally:
        presence.UPDATE_PRESENCE = kept


async def flush_ab(conn: asyncpg.Connection, ids: list[str], reps: int) -> dict[str, dict[str, float]]:
    """Median ms per shape and variant; the variants alternate in both orders, so that load
    drifts hit both alike. No device or bucket is written twice."""
    await prepare_connection(conn, ROW_STAGES)
    policy = PresencePolicy()
    start = await conn.fetchval("SELECT now() + interval '1 minute'")
    step = 0
    samples: dict[str, dict[str, list[float]]] = {s: {v: [] for v in VARIANTS} for s in SHAPES}
    for rep in range(reps):
        for shape in SHAPES:
            for variant in VARIANTS if rep % 2 == 0 else VARIANTS[::-1]:
                step += 1
                if shape == "backlog":
                    devices = ids[step * 10 : step * 10 + 10]
                    rows = [
                        HeartbeatRow(d, start + timedelta(seconds=10 * k), "ok", 50, "3.1", "wifi", None)
                        for d in devices
                        for k in range(500)
                    ]
                else:
                    chunk = ids[-5000:]
                    ts = start + timedelta(seconds=10 * step)
                    rows = [HeartbeatRow(d, ts, "ok", 50, "3.1", "wifi", None) for d in chunk]
                    if shape == "back online":
                        await conn.execute(
                            "UPDATE device_presence SET offline_after = now() - interval '1 minute',"
                            " offline_since = NULL WHERE device_id = ANY($1)",
                            chunk,
                        )
                with events(variant):
                    t = time.perf_counter()
                    async with conn.transaction():
                        await merge_heartbeats(conn, rows, 10)
                        await presence.update_presence(conn, rows, 10, policy)
                    samples[shape][variant].append((time.perf_counter() - t) * 1000)
    written = await conn.fetchval("SELECT count(*) FROM events")
    assert written == reps * 10_000, written  # the back-online shape's `on` flushes, 10,000 each
    return {s: {v: statistics.median(ms) for v, ms in by.items()} for s, by in samples.items()}


async def http_ab(url: str, mode: StorageMode, args: argparse.Namespace, wrk: str) -> dict[str, Any]:
    conn = await asyncpg.connect(url)
    try:
        token = await create_operator(conn, "bench-events")
        # Every run in its own later range of buckets, all in the past: each heartbeat is newer
        # than the device's last one (it moves presence, as live traffic does).
        span = timedelta(seconds=10 * BUCKETS_PER_RUN * 2 * args.pairs + 600)
        start: datetime = await conn.fetchval("SELECT date_trunc('minute', now() - $1::interval)", span)
    finally:
        await conn.close()
    limit = BUCKETS_PER_RUN * 2 * args.pairs
    ids = [f"ev-{i:05d}" for i in range(args.http_devices)]
    figures: dict[str, list[dict[str, float]]] = {v: [] for v in VARIANTS}
    async with in_process_service(url, mode) as (base, _):
        devices = await fleet.enroll(base, {"Authorization": f"Bearer {token}"}, ids)
        order = [v for pair in range(args.pairs) for v in (VARIANTS if pair % 2 == 0 else VARIANTS[::-1])]
        for run, variant in enumerate(order):
            targets = [
                wrk_driver.WrkDevice(
                    token=d.headers["Authorization"].removeprefix("Bearer "),
                    start=start,
                    first=run * BUCKETS_PER_RUN,
                    limit=limit,
                    offset_s=0,
                )
                for d in devices
            ]
            with events(variant):
                result = await wrk_driver.closed_loop(
                    base, wrk=wrk, devices=targets, seconds=args.seconds, workers=args.connections
                )
            (summary,) = result.summaries().values()
            assert summary.count == summary.ok, summary.statuses
            per_device = summary.count / len(devices)
            assert per_device < BUCKETS_PER_RUN, f"{per_device:.0f} requests per device overran its buckets"
            figures[variant].append(
                {
                    "rate": summary.rate,
                    "p50_ms": summary.p50_ms or 0.0,
                    "p99_ms": summary.p99_ms or 0.0,
                    "wrk_cpu_share": result.extra["generator_cpu_s"] / result.elapsed,
                }
            )
    return {
        v: {k: statistics.median(run[k] for run in runs_) for k in runs_[0]} | {"runs": len(runs_)}
        for v, runs_ in figures.items()
    }


async def bench_mode(cluster: EmbeddedCluster, mode: StorageMode, args: argparse.Namespace) -> dict[str, Any]:
    url = await migrated_database(cluster, f"event_cost_{mode}", mode)
    result: dict[str, Any] = {"mode": mode, "load_before": os.getloadavg()}
    conn = await asyncpg.connect(url)
    await conn.execute("SET jit = off")  # as on the service's own connections
    try:
        await conn.execute(_DEVICES, args.devices)
        await conn.execute(_PRESENCE, args.devices)
        await conn.execute("DELETE FROM events")  # the pre-fill's; the flushes count their own
        # The version the flushes report: no app_version_changed, only the shapes' own events.
        await conn.execute("UPDATE device_presence SET last_app_version = '3.1'")
        await conn.execute("VACUUM ANALYZE devices")
        await conn.execute("VACUUM ANALYZE device_presence")
        online = [
            r["device_id"]
            for r in await conn.fetch(
                "SELECT p.device_id FROM device_presence p JOIN devices d ON d.id = p.device_id"
                " WHERE p.offline_since IS NULL AND p.last_seen_at IS NOT NULL"
                " AND d.credential_revoked_at IS NULL ORDER BY p.device_id"
            )
        ]
        result["flush_ms"] = await flush_ab(conn, online, args.reps)
    finally:
        await conn.close()
    wrk = wrk_driver.ensure_wrk()
    if wrk is not None:
        result["http"] = await http_ab(url, mode, args, wrk)
    result["load_after"] = os.getloadavg()
    return result


def main() -> int:
    parser = standalone.parser(__doc__)
    parser.add_argument("--devices", type=int, default=20_000, help="pre-filled devices for the flushes")
    parser.add_argument("--reps", type=int, default=20, help="flushes per shape and variant")
    parser.add_argument("--http-devices", type=int, default=2_000)
    parser.add_argument("--pairs", type=int, default=3, help="HTTP runs per variant, alternated")
    parser.add_argument("--seconds", type=float, default=10.0, help="each HTTP run")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args()
    results = standalone.run(args, bench_mode)

    def flush(shape: str) -> Any:
        return lambda r: (
            "{on:.1f} / {off:.1f}".format(**r["flush_ms"][shape])
            + (f" ({r['flush_ms'][shape]['on'] / r['flush_ms'][shape]['off']:.3f})")
        )

    def http(r: dict[str, Any]) -> str:
        on, off = r["http"]["on"], r["http"]["off"]
        return f"{on['rate']:,.0f} / {off['rate']:,.0f} ({off['rate'] / on['rate']:.3f})"

    rows = [
        standalone.Row(f"writer flush, {shape}: events on / off, median ms (ratio)", flush(shape))
        for shape in SHAPES
    ]
    if all("http" in r for r in results):
        rows += [
            standalone.Row("single heartbeats over HTTP: requests/s on / off (off / on)", http),
            standalone.Row(
                "the same: p50 / p99 ms, on | off",
                lambda r: (
                    "{p50_ms:.1f} / {p99_ms:.1f}".format(**r["http"]["on"])
                    + " | "
                    + "{p50_ms:.1f} / {p99_ms:.1f}".format(**r["http"]["off"])
                ),
            ),
            standalone.Row(
                "wrk's CPU, share of one core (on | off)",
                lambda r: f"{r['http']['on']['wrk_cpu_share']:.2f} | {r['http']['off']['wrk_cpu_share']:.2f}",
            ),
        ]
    rows.append(
        standalone.Row(
            "load average before / after",
            lambda r: (
                " ".join(f"{x:.2f}" for x in r["load_before"])
                + " / "
                + " ".join(f"{x:.2f}" for x in r["load_after"])
            ),
        )
    )
    standalone.print_table(results, rows)
    with_http = all("http" in r for r in results)
    shown = [t for t in TARGETS if with_http or not t[0].startswith("single")]
    missed = standalone.print_targets(results, shown, ".3f")
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
