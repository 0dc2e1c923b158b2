"""Commands and rollout benchmark (issue 13): acks through the group-commit writer, the device
pull with 1 M commands stored, and the rollout funnel with 100,000 devices and 1 M download
events, per storage mode.

    .venv/bin/python -m benchmarks.commands [--devices 100000] [--commands 1000000]
        [--downloads 1000000] [--acks 20000] [--ack-clients 100] [--ack-windows-ms 1 10]

Pre-fill (INSERT … SELECT, timed): `devices` enrolled devices (credential `dev_bench-<i>`);
`commands` commands spread over 90 days (96 % executed, 2 % delivered, 2 % pending); 10 APK
builds, the newest one rolled out to every device: a started and a completed download event
each, 3 % failed ones, the rest of `downloads` on the older builds, all within the 7-day raw
window; one installation per device (90 % installed with the download it came from, 5 %
installing, 5 % failed; half verified) and every device's reported app version (70 % on the new
build). The per-hour download counts are filled from the raw events as the writer's merge
would have counted them; the installation counts by the table's triggers.

Measured:
* acks through the writer: `acks` fresh commands dispatched through the writer, then acked
  `delivered` by `ack-clients` concurrent callers of `GroupCommitWriter.submit`, one ack
  per call, as the handler does: throughput and per-call latency (the writer's own settings:
  5 ms batch window, 2 flushers); then fresh acks again with each `--ack-windows-ms` window
  (the flush size / latency trade-off). The first acks are then acked `executed` over HTTP
  (aiohttp client in the same process, `ack-clients` connections), reported beside them.
* `GET /v1/device/commands` over HTTP, each request from another device (so the credential
  lookup is included), sequential: p50 / p95.
* `GET /v1/apk-versions/{build}/rollout` over HTTP for the rolled-out build, sequential; and
  the maintenance step that snapshots the funnel's median and reporting devices
  (`service.rollout.counts.run`), timed once with every median to compute and once unchanged.
Prints a Markdown table; every figure is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import asyncpg

from benchmarks import standalone
from benchmarks.database import EmbeddedCluster, connect, in_process_service, migrated_database
from benchmarks.latency import p95
from service.admin import create_operator
from service.api.state import SERVICES
from service.app import create_pool, row_merges
from service.commands.acks import AckResult, AckRow
from service.commands.dispatches import DispatchRow
from service.commands.expiry import expire_commands
from service.ingest.writer import GroupCommitWriter
from service.metrics import Metrics
from service.rollout import counts
from service.settings import Settings, StorageMode

TARGET = "bench-build-10"


def summary(ms: list[float]) -> dict[str, float]:
    return {"p50": statistics.median(ms), "p95": p95(ms), "n": len(ms)}


async def prefill(conn: asyncpg.Connection, mode: StorageMode, args: argparse.Namespace) -> float:
    started = time.perf_counter()
    await conn.execute("SET synchronous_commit = off")
    n = args.devices
    await conn.execute(
        "INSERT INTO devices (id, token_hash)"
        " SELECT 'dev-' || i, encode(sha256(('dev_bench-' || i)::bytea), 'hex')"
        " FROM generate_series(1, $1::int) i",
        n,
    )
    for lo in range(0, args.commands, 250_000):
        await conn.execute(
            """
            INSERT INTO commands (request_id, device_id, command, status, created_at, updated_at,
                                  delivered_at, executed_at)
            SELECT 'bench-' || g, 'dev-' || (g % $3::int + 1), 'lock', s, c, c,
                   CASE WHEN s <> 'pending' THEN c + make_interval(secs => 1 + g % 30) END,
                   CASE WHEN s = 'executed' THEN c + make_interval(secs => 2 + g % 30) END
            FROM generate_series($1::int, $2::int) g,
                 LATERAL (SELECT now() - make_interval(secs => (g::bigint * 7919) % (90 * 86400)) AS c,
                          CASE WHEN g % 50 = 0 THEN 'pending' WHEN g % 50 = 1 THEN 'delivered'
                               ELSE 'executed' END AS s) x
            """,
            lo + 1,
            min(lo + 250_000, args.commands),
            n,
        )
    await conn.execute(
        "INSERT INTO apk_versions (package_name, version_code, version_name, build_id, sha256, size_bytes)"
        " SELECT 'com.example.agent', v, '1.' || v || '.0', 'bench-build-' || v,"
        " md5(v::text) || md5(v::text), 10000000 FROM generate_series(1, 10) v"
    )
    if mode == "postgres":
        await conn.execute(
            "SELECT telemetry_ensure_partitions('apk_download_events', interval '1 day',"
            " now() - interval '7 days', now())"
        )
    # The rolled-out build: started and completed per device, 3 % failed ones too.
    await conn.execute(
        """
        INSERT INTO apk_download_events (ts, build_id, device_id, outcome, bytes_downloaded)
        SELECT now() - make_interval(secs => 3600 + (i * 613) % (5 * 86400)) + o.shift, $2, 'dev-' || i,
               o.outcome, 10000000
        FROM generate_series(1, $1::int) i,
             (VALUES ('started', interval '0'), ('completed', interval '90 seconds')) o(outcome, shift)
        UNION ALL
        SELECT now() - make_interval(secs => 3600 + (i * 613) % (5 * 86400)), $2, 'dev-' || i, 'failed', 0
        FROM generate_series(1, $1::int) i WHERE i % 33 = 0
        """,
        n,
        TARGET,
    )
    target_events = await conn.fetchval("SELECT count(*) FROM apk_download_events")
    rest = max(0, args.downloads - target_events)
    await conn.execute(
        """
        INSERT INTO apk_download_events (ts, build_id, device_id, outcome, bytes_downloaded)
        SELECT now() - make_interval(secs => 60 + (g::bigint * 7919) % (6 * 86400)),
               'bench-build-' || (1 + g % 9),
               'dev-' || (1 + g % $2::int),
               (ARRAY['started', 'completed', 'completed', 'failed'])[1 + g % 4], 1
        FROM generate_series(1, $1::int) g
        """,
        rest,
        n,
    )
    # What the writer's download merge counts in the same statement as it stores the events.
    await conn.execute(counts.BACKFILL_DOWNLOAD_COUNTS)
    await conn.execute(
        """
        INSERT INTO apk_installations (device_id, apk_version_id, status, installed_at, failed_at,
                                       verified, download_completed_at)
        SELECT 'dev-' || i, v.id, s,
               CASE WHEN s = 'installed' THEN d + make_interval(secs => 30 + i % 600) END,
               CASE WHEN s = 'failed' THEN d END, s = 'installed' AND i % 2 = 0,
               CASE WHEN s = 'installed' THEN d END
        FROM generate_series(1, $1::int) i, apk_versions v,
             LATERAL (SELECT CASE WHEN i % 20 = 0 THEN 'installing' WHEN i % 20 = 1 THEN 'failed'
                                  ELSE 'installed' END AS s,
                             now() - make_interval(secs => 3600 + (i * 613) % (5 * 86400))
                             + interval '90 seconds' AS d) x
        WHERE v.build_id = $2
        """,
        n,
        TARGET,
    )
    await conn.execute(
        "INSERT INTO device_app_versions (device_id, app_version, reported_at)"
        " SELECT 'dev-' || i, CASE WHEN i % 10 < 7 THEN '1.10.0' ELSE '1.9.0' END, now()"
        " FROM generate_series(1, $1::int) i",
        n,
    )
    await conn.execute("VACUUM ANALYZE")
    return time.perf_counter() - started


async def writer_acks(
    url: str,
    settings: Settings,
    args: argparse.Namespace,
    window: timedelta | None = None,
    prefix: str = "ack",
) -> dict[str, Any]:
    """Fresh commands dispatched through the writer, then acked through it, one ack per call;
    with the writer's batch window from `settings` unless `window` is given."""
    pool = await create_pool(url, settings)
    metrics = Metrics()
    writer = GroupCommitWriter(pool, metrics, row_merges(), batch_window=window or settings.batch_window)
    await writer.start()
    now = datetime.now(UTC)
    ids = [f"{prefix}-{i}" for i in range(args.acks)]
    try:
        for lo in range(0, len(ids), 1000):
            await writer.submit(
                [
                    DispatchRow(rid, f"dev-{1 + i % args.devices}", "lock", None, now, None)
                    for i, rid in enumerate(ids[lo : lo + 1000], start=lo)
                ]
            )
        latencies: list[float] = []
        queue = list(enumerate(ids))
        random.Random(1).shuffle(queue)
        outcomes: list[AckResult] = []

        async def client() -> None:
            while queue:
                i, rid = queue.pop()
                started = time.perf_counter()
                (outcome,) = await writer.submit(
                    [AckRow(rid, f"dev-{1 + i % args.devices}", "delivered", None, None, None)]
                )
                latencies.append((time.perf_counter() - started) * 1000)
                outcomes.append(outcome.result)

        flushes_before = _sample(metrics, "telemetry_flush_duration_seconds_count")
        seconds_before = _sample(metrics, "telemetry_flush_duration_seconds_sum")
        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(args.ack_clients)))
        elapsed = time.perf_counter() - started
        flushes = _sample(metrics, "telemetry_flush_duration_seconds_count") - flushes_before
        flush_s = _sample(metrics, "telemetry_flush_duration_seconds_sum") - seconds_before
    finally:
        await writer.stop()
        await pool.close()
    assert outcomes.count(AckResult.CHANGED) == len(ids), "every ack must move its command"
    return {
        "per_s": len(ids) / elapsed,
        "flushes": flushes,
        "rows_per_flush": len(ids) / flushes,
        "flush_ms": flush_s / flushes * 1000,
        **summary(latencies),
    }


def _sample(metrics: Metrics, name: str) -> float:
    return metrics.registry.get_sample_value(name) or 0.0


async def http_acks(session: aiohttp.ClientSession, base: str, args: argparse.Namespace) -> dict[str, Any]:
    """The same commands acked `executed` over HTTP by their own devices."""
    queue = list(range(args.acks))
    random.Random(2).shuffle(queue)
    latencies: list[float] = []

    async def client() -> None:
        while queue:
            i = queue.pop()
            headers = {"Authorization": f"Bearer dev_bench-{1 + i % args.devices}"}
            started = time.perf_counter()
            async with session.post(
                f"{base}/v1/dispatches/ack-{i}/ack", json={"status": "executed"}, headers=headers
            ) as r:
                body = await r.read()
                assert r.status == 200, body[:300]
            latencies.append((time.perf_counter() - started) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(args.ack_clients)))
    elapsed = time.perf_counter() - started
    return {"per_s": args.acks / elapsed, **summary(latencies)}


async def timed_gets(
    session: aiohttp.ClientSession, requests: list[tuple[str, dict[str, str]]]
) -> list[float]:
    out = []
    for url, headers in requests:
        started = time.perf_counter()
        async with session.get(url, headers=headers) as r:
            body = await r.read()
            assert r.status == 200, body[:300]
        out.append((time.perf_counter() - started) * 1000)
    return out


async def bench_mode(cluster: EmbeddedCluster, mode: StorageMode, args: argparse.Namespace) -> dict[str, Any]:
    url = await migrated_database(cluster, f"commands_{mode}", mode)
    settings = Settings(database_url=url, storage_mode=mode)
    result: dict[str, Any] = {"mode": mode}
    async with connect(url) as conn:
        result["prefill_s"] = await prefill(conn, mode, args)
        result["commands"] = await conn.fetchval("SELECT count(*) FROM commands")
        result["downloads"] = await conn.fetchval("SELECT count(*) FROM apk_download_events")
        # What the service's first maintenance round would do (expire the open commands past
        # the TTL) is done here, so that round does not run during the measurements.
        result["expired_before"] = (await expire_commands(conn, settings.command_ttl)).expired
        token = await create_operator(conn, "bench")
        # The maintenance step behind the funnel's snapshot: first with every median to compute,
        # then as a later round finds it (nothing changed).
        for key in ("snapshot_first_ms", "snapshot_again_ms"):
            started = time.perf_counter()
            report = await counts.run(conn, settings.retention.apk_download_events)
            result[key] = (time.perf_counter() - started) * 1000
            assert report.error is None, report.error
    settings = replace(settings, database_url=url)
    result["writer_acks"] = await writer_acks(url, settings, args)
    for ms in args.ack_windows_ms:  # the flush size / latency trade-off, same acks, other windows
        result[f"writer_acks_{ms:g}ms"] = await writer_acks(
            url, settings, args, timedelta(milliseconds=ms), prefix=f"ack{ms:g}ms"
        )
    op = {"Authorization": f"Bearer {token}"}
    rng = random.Random(3)
    async with in_process_service(url, mode) as (base, app):
        maintenance = app[SERVICES].maintenance
        assert maintenance is not None
        for _ in range(600):  # its first round (runs at start) is not part of any measurement
            if maintenance.last_health is not None:
                break
            await asyncio.sleep(0.2)
        connector = aiohttp.TCPConnector(limit=args.ack_clients)
        async with aiohttp.ClientSession(connector=connector) as session:
            result["http_acks"] = await http_acks(session, base, args)
            pulls = [
                (f"{base}/v1/device/commands?status=pending", {"Authorization": f"Bearer dev_bench-{d}"})
                for d in rng.sample(range(1, args.devices + 1), args.pulls + 20)
            ]
            await timed_gets(session, pulls[:20])  # warm-up
            result["pull_ms"] = summary(await timed_gets(session, pulls[20:]))
            rollout = (f"{base}/v1/apk-versions/{TARGET}/rollout", op)
            async with session.get(rollout[0], headers=op) as r:
                funnel = await r.json()
            assert (
                funnel["installations"]["installed"] > 0 and funnel["downloads"]["completed"] == args.devices
            )
            result["funnel"] = funnel
            await timed_gets(session, [rollout] * 3)
            result["rollout_ms"] = summary(await timed_gets(session, [rollout] * args.rollouts))
    return result


def main() -> None:
    parser = standalone.parser(
        __doc__,
        devices=100_000,
        commands=1_000_000,
        downloads=1_000_000,
        acks=20_000,
        ack_clients=100,
        pulls=500,
        rollouts=50,
    )
    parser.add_argument(
        "--ack-windows-ms",
        type=float,
        nargs="*",
        default=[1.0, 10.0],
        help="acks through the writer again with these batch windows (ms), after the default one",
    )
    args = parser.parse_args()
    results = standalone.run(args, bench_mode)
    print(
        f"{args.devices} devices, {args.commands} commands, {args.downloads} download events;"
        f" {args.acks} acks by {args.ack_clients} concurrent callers\n"
    )
    rows = [
        ("pre-fill, s", lambda r: f"{r['prefill_s']:.0f}"),
        ("commands stored / download events stored", lambda r: f"{r['commands']:,} / {r['downloads']:,}"),
        ("acks through the writer, acks/s (target >= 2,000)", lambda r: f"{r['writer_acks']['per_s']:,.0f}"),
        (
            "same, per-call latency p50 / p95 ms (target p95 <= 25)",
            lambda r: "{p50:.1f} / {p95:.1f}".format(**r["writer_acks"]),
        ),
        (
            "same, flushes: acks per flush / mean flush ms",
            lambda r: "{rows_per_flush:.0f} / {flush_ms:.1f}".format(**r["writer_acks"]),
        ),
        *(
            (
                f"same with a {ms:g} ms batch window: acks/s, p50 / p95 ms, acks per flush",
                lambda r, ms=ms: "{per_s:,.0f}, {p50:.1f} / {p95:.1f}, {rows_per_flush:.0f}".format(
                    **r[f"writer_acks_{ms:g}ms"]
                ),
            )
            for ms in args.ack_windows_ms
        ),
        ("acks over HTTP (client in the same process), acks/s", lambda r: f"{r['http_acks']['per_s']:,.0f}"),
        ("same, p50 / p95 ms", lambda r: "{p50:.1f} / {p95:.1f}".format(**r["http_acks"])),
        (
            "GET /v1/device/commands, p50 / p95 ms (target p95 <= 5)",
            lambda r: "{p50:.2f} / {p95:.2f}".format(**r["pull_ms"]),
        ),
        (
            "GET /v1/apk-versions/{build}/rollout, p50 / p95 ms (target p95 <= 50)",
            lambda r: "{p50:.1f} / {p95:.1f}".format(**r["rollout_ms"]),
        ),
        (
            "funnel snapshot (maintenance step), first / unchanged round ms",
            lambda r: f"{r['snapshot_first_ms']:.0f} / {r['snapshot_again_ms']:.0f}",
        ),
    ]
    standalone.print_table(results, [standalone.Row(label, cell) for label, cell in rows])


if __name__ == "__main__":
    main()
