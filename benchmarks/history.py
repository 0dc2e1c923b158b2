"""History benchmark (issue 14): history reads over HTTP on pre-filled rollups, the refresh cost
per hour of raw heartbeats, and bytes per raw heartbeat row, per storage mode.

    .venv/bin/python -m benchmarks.history [--devices 10000] [--days 90] [--raw-devices 1000]

Pre-fill: `devices x days` hourly rows and `days` fleet rows written straight into the rollups'
storage (the rollup tables, or the continuous aggregates' materialization hypertables) with the
watermark set to the last whole hour (then VACUUM ANALYZE, the steady state of old rollup
rows), because producing 90 days of raw heartbeats for them is
not feasible here; the raw tail (the last hours) comes from real raw rows. Raw heartbeats:
`raw-devices` devices every `raw-interval` s (10) for `raw-hours` hours (random status, battery and second
within the bucket), by INSERT … SELECT, then one refresh
timed, then (timescale) every chunk compressed. Prints a Markdown table; every figure is measured.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import aiohttp
import asyncpg

from benchmarks import standalone
from benchmarks.database import EmbeddedCluster, connect, in_process_service, migrated_database
from benchmarks.latency import p95
from service.admin import create_operator
from service.db.rollups import FLEET_DAILY, HOURLY
from service.retention.recent_days import refresh_recent_days
from service.retention.rollups import read_mechanism, refresh_tables
from service.settings import StorageMode

_MAT = """
SELECT format('%I.%I', materialization_hypertable_schema, materialization_hypertable_name),
       (SELECT h.id FROM _timescaledb_catalog.hypertable h
        WHERE h.schema_name = materialization_hypertable_schema
          AND h.table_name = materialization_hypertable_name)
FROM timescaledb_information.continuous_aggregates WHERE view_name = $1
"""


async def _target(conn: asyncpg.Connection, mode: StorageMode, name: str) -> tuple[str, int | None]:
    if mode == "postgres":
        return name, None
    row = await conn.fetchrow(_MAT, name)
    return row[0], row[1]


async def prefill_rollups(conn: asyncpg.Connection, mode: StorageMode, devices: int, days: int) -> float:
    started = time.perf_counter()
    top = await conn.fetchval(
        "SELECT date_bin('1 hour', now() - interval '2 hours', timestamptz '2000-01-01')"
    )
    hourly, hourly_id = await _target(conn, mode, HOURLY.name)
    daily, daily_id = await _target(conn, mode, FLEET_DAILY.name)
    await conn.execute("SET synchronous_commit = off")
    for chunk in range(0, days * 24, 24 * 5):  # five days per statement
        await conn.execute(
            f"""
            INSERT INTO {hourly} SELECT 'dev-' || d, h, 360, 20, 55.5, 90, 19980, 300, 30, 20, 10, 0, '1.0',
                   h, h + interval '59 minutes 50 seconds'
            FROM generate_series(1, $1) d,
                 generate_series($2::timestamptz - make_interval(hours => $3 + 24 * 5 - 1),
                                 $2::timestamptz - make_interval(hours => $3), interval '1 hour') h
            WHERE h > $2::timestamptz - make_interval(days => $4)
            """,
            devices,
            top,
            chunk,
            days,
        )
    await conn.execute(
        f"INSERT INTO {daily} SELECT d, $1::bigint, $1::bigint * 8640, $1::bigint * 8640 * 55, 55.0"
        " FROM generate_series(date_bin('1 day', $2::timestamptz, timestamptz '2000-01-01')"
        " - make_interval(days => $3),"
        " date_bin('1 day', $2::timestamptz, timestamptz '2000-01-01') - interval '1 day',"
        " interval '1 day') d",
        devices,
        top,
        days,
    )
    until = top + HOURLY.bucket
    day_until = await conn.fetchval(
        "SELECT date_bin('1 day', $1::timestamptz, timestamptz '2000-01-01')", until
    )
    if mode == "postgres":
        await conn.execute(
            "UPDATE rollup_watermarks SET materialized_until = $1 WHERE rollup = $2", until, HOURLY.name
        )
        await conn.execute(
            "UPDATE rollup_watermarks SET materialized_until = $1 WHERE rollup = $2",
            day_until,
            FLEET_DAILY.name,
        )
    else:
        for mat_id, value in ((hourly_id, until), (daily_id, day_until)):
            await conn.execute(
                "INSERT INTO _timescaledb_catalog.continuous_aggs_watermark (mat_hypertable_id, watermark)"
                " VALUES ($1, _timescaledb_functions.to_unix_microseconds($2))"
                " ON CONFLICT (mat_hypertable_id) DO UPDATE SET watermark = EXCLUDED.watermark",
                mat_id,
                value,
            )
    # VACUUM too: rollup rows written days ago have long been vacuumed (their pages all-visible),
    # which is what lets the device-history read skip the heap (an index-only scan).
    await conn.execute("VACUUM ANALYZE")
    return time.perf_counter() - started


async def lag_daily_rollup(conn: asyncpg.Connection, mode: StorageMode) -> float:
    """The fleet read's worst case: the daily rollup has not closed yesterday yet (as between
    midnight and its first refresh), so the recent days span up to 26 hours of hourly rows.
    Returns the seconds the maintenance task's recent-days refresh takes then."""
    daily, daily_id = await _target(conn, mode, FLEET_DAILY.name)
    back = "date_bin('1 day', now() - interval '2 hours', timestamptz '2000-01-01') - interval '1 day'"
    await conn.execute(f"DELETE FROM {daily} WHERE day >= {back}")
    if mode == "postgres":
        await conn.execute(
            f"UPDATE rollup_watermarks SET materialized_until = {back} WHERE rollup = $1", FLEET_DAILY.name
        )
    else:
        await conn.execute(
            "UPDATE _timescaledb_catalog.continuous_aggs_watermark"
            f" SET watermark = _timescaledb_functions.to_unix_microseconds({back})"
            " WHERE mat_hypertable_id = $1",
            daily_id,
        )
    started = time.perf_counter()
    recent = await refresh_recent_days(conn, await read_mechanism(conn))
    assert not recent.skipped and recent.days == 2, recent
    return time.perf_counter() - started


async def timed_gets(session: aiohttp.ClientSession, urls: list[str], headers: dict[str, str]) -> list[float]:
    out = []
    for url in urls:
        started = time.perf_counter()
        async with session.get(url, headers=headers) as r:
            body = await r.read()
            assert r.status == 200, body[:300]
        out.append((time.perf_counter() - started) * 1000)
    return out


async def raw_heartbeats(
    conn: asyncpg.Connection, mode: StorageMode, devices: int, hours: int, interval: int = 10
) -> dict[str, Any]:
    await conn.execute(
        "SELECT telemetry_ensure_partitions('device_heartbeats', interval '2 hours',"
        " now() - make_interval(hours => $1 + 2), now())"
        if mode == "postgres"
        else "SELECT 1 WHERE $1::int IS NOT NULL",
        hours,
    )
    started = time.perf_counter()
    await conn.execute(
        """
        INSERT INTO device_heartbeats (device_id, bucket_start, ts, status, battery_pct, app_version, network)
        SELECT 'dev-' || d, b, b + make_interval(secs => floor(random() * $3)),
               (ARRAY['ok', 'ok', 'ok', 'ok', 'charging', 'idle', 'low_battery'])
                   [1 + floor(random() * 7)::int],
               floor(random() * 101)::int, '1.0.' || (d % 3), (ARRAY['wifi', 'lte', '5g'])[1 + d % 3]
        FROM generate_series(1, $1) d,
             generate_series(0, $2 * 3600 / $3 - 1) s,
             LATERAL (SELECT date_bin('10 seconds', now() - make_interval(hours => $2), timestamptz 'epoch')
                             + s * make_interval(secs => $3) AS b) x
        """,
        devices,
        hours,
        interval,
    )
    insert_s = time.perf_counter() - started
    rows = await conn.fetchval("SELECT count(*) FROM device_heartbeats")
    await conn.execute("VACUUM ANALYZE device_heartbeats")
    out: dict[str, Any] = {"rows": rows, "insert_s": insert_s}
    if mode == "postgres":
        size = await conn.fetchval(
            "SELECT sum(pg_total_relation_size(format('telemetry_partitions.%I', partition_name)))"
            " FROM telemetry_partition_bounds('device_heartbeats')"
        )
    else:
        size = await conn.fetchval("SELECT hypertable_size('device_heartbeats')")
    out["bytes_per_row"] = size / rows
    # One refresh of everything the raw rows cover.
    started = time.perf_counter()
    if mode == "postgres":
        await conn.execute("UPDATE rollup_watermarks SET materialized_until = NULL")
        await refresh_tables(conn)
    else:
        for name, back in ((HOURLY.name, f"{hours + 2} hours"), (FLEET_DAILY.name, "3 days")):
            await conn.execute(
                f"CALL refresh_continuous_aggregate('{name}', now() - interval '{back}', now())"
            )
    out["refresh_s_per_hour"] = (time.perf_counter() - started) / hours
    if mode == "timescale":
        started = time.perf_counter()
        await conn.execute(
            "SELECT compress_chunk(c, if_not_compressed => true) FROM show_chunks('device_heartbeats') c"
        )
        out["compress_s"] = time.perf_counter() - started
        out["compressed_bytes_per_row"] = (
            await conn.fetchval("SELECT hypertable_size('device_heartbeats')") / rows
        )
    return out


async def bench_mode(cluster: EmbeddedCluster, mode: StorageMode, args: argparse.Namespace) -> dict[str, Any]:
    url = await migrated_database(cluster, f"history_{mode}", mode)
    result: dict[str, Any] = {"mode": mode}
    async with connect(url) as conn:
        result["raw"] = await raw_heartbeats(conn, mode, args.raw_devices, args.raw_hours, args.raw_interval)
        await conn.execute("TRUNCATE device_heartbeats_hourly" if mode == "postgres" else "SELECT 1")
        if mode == "timescale":
            for name in (FLEET_DAILY.name, HOURLY.name):
                await conn.execute(f"TRUNCATE {name}")
        else:
            await conn.execute("TRUNCATE fleet_daily")
        if args.raw_only:
            return result
        result["prefill_s"] = await prefill_rollups(conn, mode, args.devices, args.days)
        result["mechanism"] = await read_mechanism(conn)
        result["recent_days_s"] = await lag_daily_rollup(conn, mode)
        token = await create_operator(conn, "bench")
        devices = [f"dev-{i}" for i in range(1, args.devices + 1, max(1, args.devices // args.requests))]
        await conn.executemany(
            "INSERT INTO devices (id, token_hash) VALUES ($1::text, md5($1::text) || md5($1::text))"
            " ON CONFLICT DO NOTHING",
            [(d,) for d in devices],
        )
    headers = {"Authorization": f"Bearer {token}"}
    async with in_process_service(url, mode) as (base, _), aiohttp.ClientSession() as session:
        device_urls = [f"{base}/v1/devices/{d}/history?bucket=1h" for d in devices]
        now = time.time()
        frm = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - 30 * 86400))
        device_urls = [u + f"&from={frm}" for u in device_urls]
        await timed_gets(session, device_urls[:10], headers)  # warm-up
        async with session.get(device_urls[0], headers=headers) as r:
            # The pre-filled hours are really read (30 days or all of them).
            assert len((await r.json())["buckets"]) >= 24 * min(30, args.days) - 1
        dev_ms = await timed_gets(session, device_urls, headers)
        frm90 = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - 90 * 86400))
        fleet_url = f"{base}/v1/fleet/history?bucket=1d&from={frm90}"
        await timed_gets(session, [fleet_url] * 3, headers)
        async with session.get(fleet_url, headers=headers) as r:
            # Every pre-filled day, yesterday and today from the recent days, is there.
            days = (await r.json())["buckets"]
            assert len(days) >= min(90, args.days) and days[-1]["devices_seen"] == args.devices, days[-3:]
        fleet_ms = await timed_gets(session, [fleet_url] * args.fleet_requests, headers)
    result["device_30d_1h_ms"] = {"p50": statistics.median(dev_ms), "p95": p95(dev_ms), "n": len(dev_ms)}
    result["fleet_90d_1d_ms"] = {"p50": statistics.median(fleet_ms), "p95": p95(fleet_ms), "n": len(fleet_ms)}
    return result


def main() -> None:
    parser = standalone.parser(
        __doc__, devices=10_000, days=90, raw_devices=1_000, raw_hours=6, requests=200, fleet_requests=50
    )
    parser.add_argument(
        "--raw-interval", type=int, default=10, help="seconds between heartbeats (multiple of 10)"
    )
    parser.add_argument("--raw-only", action="store_true", help="only the raw-row figures")
    args = parser.parse_args()
    results = standalone.run(args, bench_mode)
    print(f"devices {args.devices} x {args.days} days of hourly rollups; raw {args.raw_devices} devices x")
    print(f"{args.raw_hours} h every {args.raw_interval} s\n")
    rows = (
        []
        if args.raw_only
        else [
            ("rollup pre-fill, s", lambda r: f"{r['prefill_s']:.0f}"),
            (
                "recent fleet days computed by maintenance (yesterday not closed: 26 h x devices), s",
                lambda r: f"{r['recent_days_s']:.2f}",
            ),
            (
                "device history 30 d at 1 h over HTTP, p50 / p95 ms",
                lambda r: "{p50:.1f} / {p95:.1f}".format(**r["device_30d_1h_ms"]),
            ),
            (
                "fleet history 90 d at 1 d over HTTP, p50 / p95 ms",
                lambda r: "{p50:.1f} / {p95:.1f}".format(**r["fleet_90d_1d_ms"]),
            ),
        ]
    )
    rows += [
        ("raw heartbeat rows", lambda r: str(r["raw"]["rows"])),
        ("bytes per raw heartbeat row", lambda r: f"{r['raw']['bytes_per_row']:.0f}"),
        (
            "bytes per row, compressed",
            lambda r: (
                f"{r['raw'].get('compressed_bytes_per_row', 0):.0f}"
                if "compressed_bytes_per_row" in r["raw"]
                else "-"
            ),
        ),
        ("refresh, s per hour of raw data", lambda r: f"{r['raw']['refresh_s_per_hour']:.2f}"),
    ]
    standalone.print_table(results, [standalone.Row(label, cell) for label, cell in rows])


if __name__ == "__main__":
    main()
