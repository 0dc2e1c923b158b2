"""Rollups in both storage modes: their values are the raw rows' aggregates, a refresh can be
repeated, a device's history joins rollup and raw tail, the fleet's reads the rollups alone,
and raw data never goes before it is rolled up."""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from service.api.history import device_history, fleet_history
from service.db.rollups import FLEET_DAILY, HOURLY, STATUSES, mechanism_for
from service.db.time_series import HEARTBEATS
from service.metrics import Metrics
from service.retention.cleanup import clean_table, run_cleanup
from service.retention.health import assess
from service.retention.maintenance import Maintenance
from service.retention.policies import read_policy, set_window
from service.retention.recent_days import refresh_recent_days
from service.retention.rollup_show import mechanism_reason
from service.retention.rollups import read_mechanism, refresh_now, refresh_tables, watermark
from service.settings import RetentionWindows, Settings, StorageMode
from tests.retention.history import cover, server_now
from tests.support.cli import child_env
from tests.support.cluster import TestServer, create_database, migrate, settings_for

ORIGIN = datetime(2000, 1, 1, tzinfo=UTC)
HOUR, DAY = timedelta(hours=1), timedelta(days=1)
LOOKAHEAD = timedelta(days=1)


@dataclass(frozen=True)
class Beat:
    device_id: str
    ts: datetime
    status: str
    battery_pct: int
    app_version: str | None


def floor(t: datetime, size: timedelta) -> datetime:
    return ORIGIN + ((t - ORIGIN) // size) * size


def fleet_beats(now: datetime, oldest: timedelta, newest: timedelta, seed: int = 14) -> list[Beat]:
    """Four devices, 60 heartbeats each at distinct 10 s buckets between `oldest` and `newest`
    ago, with every status (and one the rollups count as "other"), and app versions or none."""
    rng = random.Random(seed)
    top = floor(now - newest, timedelta(seconds=10))
    span = int((oldest - newest).total_seconds() // 10)
    beats = []
    for d in range(4):
        for k in rng.sample(range(span), 60):
            beats.append(
                Beat(
                    f"d{d}",
                    top - timedelta(seconds=10 * k) + timedelta(seconds=rng.randrange(10)),
                    rng.choice([*STATUSES, "rebooting"]),
                    rng.randrange(101),
                    rng.choice(["1.0", "1.1", None]),
                )
            )
    return beats


async def insert(conn: asyncpg.Connection, mode: StorageMode, beats: list[Beat]) -> None:
    await cover(conn, mode, HEARTBEATS, min(b.ts for b in beats), max(b.ts for b in beats))
    await conn.executemany(
        "INSERT INTO device_heartbeats (device_id, bucket_start, ts, status, battery_pct, app_version)"
        " VALUES ($1, date_bin('10 seconds', $2, timestamptz 'epoch'), $2, $3, $4, $5)",
        [(b.device_id, b.ts, b.status, b.battery_pct, b.app_version) for b in beats],
    )


async def materialize(conn: asyncpg.Connection, mode: StorageMode) -> None:
    """Everything up to the refresh policies' end offset, whatever its age."""
    if mode == "timescale":
        for name, back in ((HOURLY.name, "3 days"), (FLEET_DAILY.name, "5 days")):
            await conn.execute(
                f"CALL refresh_continuous_aggregate('{name}', now() - interval '{back}',"
                " now() - interval '1 hour')"
            )
    else:
        report = await refresh_tables(conn)
        assert report.errors == []


def expected_hours(beats: list[Beat]) -> dict[tuple[str, datetime], dict[str, object]]:
    groups: dict[tuple[str, datetime], list[Beat]] = defaultdict(list)
    for b in beats:
        groups[(b.device_id, floor(b.ts, HOUR))].append(b)
    out = {}
    for key, group in groups.items():
        batteries = [b.battery_pct for b in group]
        statuses = [b.status if b.status in STATUSES else "other" for b in group]
        out[key] = {
            "heartbeats": len(group),
            "battery_min": min(batteries),
            "battery_max": max(batteries),
            "battery_sum": sum(batteries),
            "battery_avg": pytest.approx(sum(batteries) / len(group)),
            **{f"status_{s}": statuses.count(s) for s in (*STATUSES, "other")},
            "last_app_version": max(group, key=lambda b: b.ts).app_version,
            "first_ts": min(b.ts for b in group),
            "last_ts": max(b.ts for b in group),
        }
    return out


def expected_fleet(beats: list[Beat], size: timedelta) -> dict[datetime, tuple[int, int, object]]:
    groups: dict[datetime, list[Beat]] = defaultdict(list)
    for b in beats:
        groups[floor(b.ts, size)].append(b)
    return {
        start: (
            len({b.device_id for b in g}),
            len(g),
            pytest.approx(sum(b.battery_pct for b in g) / len(g)),
        )
        for start, g in groups.items()
    }


async def test_rollup_values_equal_brute_force_aggregates_of_the_raw_rows(
    quiet: asyncpg.Connection, mode: StorageMode
) -> None:
    conn = quiet
    now = await server_now(conn)
    beats = fleet_beats(now, oldest=timedelta(hours=44), newest=timedelta(minutes=5))
    # The devices read below have a heartbeat after any watermark, whatever the minute of the hour.
    beats += [Beat(d, now - timedelta(minutes=3), "ok", 50, "1.1") for d in ("d0", "d3")]
    await insert(conn, mode, beats)
    await materialize(conn, mode)
    mechanism = await read_mechanism(conn)
    assert mechanism == ("continuous_aggregate" if mode == "timescale" else "rollup_table")

    hourly_wm = await watermark(conn, mechanism, HOURLY)
    assert hourly_wm is not None and now - 2 * HOUR <= hourly_wm <= now - HOUR
    rows = await conn.fetch(f"SELECT * FROM {HOURLY.name} ORDER BY device_id, hour")
    stored = {
        (r["device_id"], r["hour"]): {k: r[k] for k in r.keys() if k not in ("device_id", "hour")}
        for r in rows
    }
    expected = {k: v for k, v in expected_hours(beats).items() if k[1] < hourly_wm}
    assert len(expected) > 40
    assert stored == expected

    daily_wm = await watermark(conn, mechanism, FLEET_DAILY)
    assert daily_wm is not None and daily_wm == floor(now - HOUR, DAY)
    daily = {
        r["day"]: (r["devices_seen"], r["heartbeats"], r["battery_avg"])
        for r in await conn.fetch(f"SELECT * FROM {FLEET_DAILY.name}")
    }
    want = {d: v for d, v in expected_fleet(beats, DAY).items() if d < daily_wm}
    assert want and daily == want

    # History reads: rollup before the watermark, raw tail after it, the same numbers throughout.
    for device in ("d0", "d3"):
        history = await device_history(conn, device, now - 2 * DAY, now, "1h")
        assert history.materialized_until == hourly_wm
        got = {
            (device, b.start): {
                "heartbeats": b.heartbeats,
                "battery_min": b.battery_min,
                "battery_max": b.battery_max,
                "battery_avg": b.battery_avg,
                **{f"status_{s}": n for s, n in b.status_counts.items()},
                "last_app_version": b.last_app_version,
                "first_ts": b.first_ts,
                "last_ts": b.last_ts,
            }
            for b in history.buckets
        }
        want_device = {
            k: {f: v for f, v in e.items() if f != "battery_sum"}
            for k, e in expected_hours(beats).items()
            if k[0] == device
        }
        assert got == want_device
        assert any(b.start >= hourly_wm for b in history.buckets)  # the raw tail is in
        days = await device_history(conn, device, now - 2 * DAY, now, "1d")
        mine = [b for b in beats if b.device_id == device]
        want_days = {
            day: (len(group), min(b.battery_pct for b in group), max(b.battery_pct for b in group))
            for day in {floor(b.ts, DAY) for b in mine}
            for group in [[b for b in mine if floor(b.ts, DAY) == day]]
        }
        assert {b.start: (b.heartbeats, b.battery_min, b.battery_max) for b in days.buckets} == want_days
    # The fleet's history is the rollups alone: up to the hourly watermark, the days the daily
    # rollup has not closed from fleet_daily_recent once the maintenance task computed them.
    recent = await refresh_recent_days(conn, mechanism)
    # Between 01:00 and 02:00 UTC the hourly watermark is midnight, where the daily one is: then
    # no day is open and the recent table holds none.
    assert recent.covered_until == hourly_wm and recent.days >= (1 if hourly_wm > daily_wm else 0)
    materialized = [b for b in beats if b.ts < hourly_wm]
    for size, name in ((HOUR, "1h"), (DAY, "1d")):
        fleet = await fleet_history(conn, now - 3 * DAY, now, name)
        assert fleet.materialized_until == hourly_wm
        assert {
            b.start: (b.devices_seen, b.heartbeats, b.battery_avg) for b in fleet.buckets
        } == expected_fleet(materialized, size)


async def test_refreshing_again_changes_nothing(quiet: asyncpg.Connection, mode: StorageMode) -> None:
    conn = quiet
    now = await server_now(conn)
    await insert(conn, mode, fleet_beats(now, oldest=timedelta(hours=20), newest=timedelta(minutes=5)))
    await materialize(conn, mode)
    snapshot = "SELECT * FROM {} ORDER BY 1, 2"
    hourly = await conn.fetch(snapshot.format(HOURLY.name))
    daily = await conn.fetch(snapshot.format(FLEET_DAILY.name))
    await materialize(conn, mode)
    if mode == "postgres":
        # Re-run a window already materialized: the watermark held back by six hours.
        await conn.execute(
            "UPDATE rollup_watermarks SET materialized_until = materialized_until - interval '6 hours'"
        )
        await materialize(conn, mode)
    assert hourly and await conn.fetch(snapshot.format(HOURLY.name)) == hourly
    assert daily and await conn.fetch(snapshot.format(FLEET_DAILY.name)) == daily


async def test_the_newest_hour_is_in_the_history_before_any_refresh(
    quiet: asyncpg.Connection, mode: StorageMode
) -> None:
    conn = quiet
    now = await server_now(conn)
    await insert(conn, mode, [Beat("d0", now - timedelta(seconds=30), "ok", 42, "2.0")])
    assert await watermark(conn, await read_mechanism(conn), HOURLY) is None
    history = await device_history(conn, "d0", now - HOUR, now, "1h")
    assert [(b.start, b.heartbeats, b.battery_avg, b.last_app_version) for b in history.buckets] == [
        (floor(now - timedelta(seconds=30), HOUR), 1, 42.0, "2.0")
    ]
    # The fleet's history waits for the rollups, and says how far they reach.
    await refresh_recent_days(conn, await read_mechanism(conn))
    for name in ("1h", "1d"):
        fleet = await fleet_history(conn, now - HOUR, now, name)
        assert (fleet.buckets, fleet.materialized_until) == ([], None)


async def test_dropping_raw_rows_then_refreshing_leaves_the_history_unchanged(
    quiet: asyncpg.Connection, mode: StorageMode
) -> None:
    conn = quiet
    now = await server_now(conn)
    beats = fleet_beats(now, oldest=timedelta(hours=44), newest=timedelta(hours=2))
    await insert(conn, mode, beats)
    await materialize(conn, mode)
    await refresh_recent_days(conn, await read_mechanism(conn))
    device_before = await device_history(conn, "d1", now - 3 * DAY, now, "1h")
    fleet_before = await fleet_history(conn, now - 3 * DAY, now, "1d")

    # The shortest window the guard allows; retention then drops the oldest raw rows.
    window = timedelta(hours=27)
    assert HOURLY.reach <= window
    await set_window(conn, mode, HEARTBEATS, window, LOOKAHEAD)
    report = await run_cleanup(conn, mode, [HEARTBEATS])
    assert report.ok and report.tables[0].dropped
    oldest_raw = await conn.fetchval("SELECT min(ts) FROM device_heartbeats")
    assert oldest_raw > min(b.ts for b in beats)

    # The refresh policies run (their own windows): nothing already rolled up is lost.
    refreshed = await refresh_now(conn, await read_mechanism(conn))
    assert refreshed.errors == []
    await refresh_recent_days(conn, await read_mechanism(conn))
    device_after = await device_history(conn, "d1", now - 3 * DAY, now, "1h")
    fleet_after = await fleet_history(conn, now - 3 * DAY, now, "1d")
    assert device_after.buckets == device_before.buckets
    assert fleet_after.buckets == fleet_before.buckets
    assert len(device_before.buckets) > 10


async def test_postgres_keeps_raw_partitions_the_rollup_has_not_read(
    quiet: asyncpg.Connection, mode: StorageMode
) -> None:
    if mode != "postgres":
        pytest.skip("the watermark guard of rollup tables")
    conn = quiet
    now = await server_now(conn)
    await insert(conn, mode, fleet_beats(now, oldest=timedelta(hours=44), newest=timedelta(hours=30)))
    await set_window(conn, mode, HEARTBEATS, timedelta(hours=27), LOOKAHEAD)
    # The hourly rollup has read nothing younger than 40 hours ago.
    await conn.execute(
        "UPDATE rollup_watermarks SET materialized_until = $1 WHERE rollup = $2",
        now - timedelta(hours=40),
        HOURLY.name,
    )
    held = await clean_table(conn, mode, HEARTBEATS)
    assert held.error is None and held.cutoff == now - timedelta(hours=41)
    assert all(d.range_end <= now - timedelta(hours=41) for d in held.dropped)
    assert (
        await conn.fetchval(
            "SELECT count(*) FROM device_heartbeats WHERE ts >= $1", now - timedelta(hours=41)
        )
        > 0
    )
    # Once the rollup has caught up, the window alone decides.
    assert (await refresh_tables(conn)).errors == []
    freed = await clean_table(conn, mode, HEARTBEATS)
    assert timedelta(0) <= freed.cutoff - (now - timedelta(hours=27)) < timedelta(minutes=1)
    assert await conn.fetchval("SELECT count(*) FROM device_heartbeats") == 0


def _telemetry(db_url: str, mode: StorageMode, *args: str) -> subprocess.CompletedProcess[str]:
    env = child_env()
    env.update(DATABASE_URL=db_url, TELEMETRY_STORAGE_MODE=mode)
    return subprocess.run(
        [sys.executable, "-m", "service", *args], env=env, capture_output=True, text=True, timeout=120
    )


async def test_retention_set_that_breaks_the_guard_is_refused_naming_both_numbers(
    db_url: str, conn: asyncpg.Connection, mode: StorageMode
) -> None:
    result = await asyncio.to_thread(_telemetry, db_url, mode, "retention", "set", "device_heartbeats", "1d")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "window 1d is shorter than" in result.stderr and "reach 1d2h30m" in result.stderr
    assert (await read_policy(conn, mode, HEARTBEATS)).window == timedelta(days=2)
    allowed = await asyncio.to_thread(
        _telemetry, db_url, mode, "retention", "set", "device_heartbeats", "27h"
    )
    assert allowed.returncode == 0, allowed.stderr


async def test_migrations_refuse_a_raw_window_shorter_than_the_refresh_reach(
    pg_server: TestServer, mode: StorageMode
) -> None:
    url = await create_database(pg_server)
    settings = settings_for(url, mode, retention=RetentionWindows(device_heartbeats=timedelta(hours=12)))
    with pytest.raises(Exception, match=r"window 12h is shorter than .* reach 1d2h30m"):
        await migrate(url, mode, settings=settings)


async def test_retention_check_fails_on_a_held_back_watermark_and_passes_once_caught_up(
    db_url: str, quiet: asyncpg.Connection, mode: StorageMode
) -> None:
    conn = quiet
    now = await server_now(conn)
    await insert(conn, mode, fleet_beats(now, oldest=timedelta(hours=10), newest=timedelta(minutes=5)))
    if mode == "timescale":
        await conn.execute(
            f"CALL refresh_continuous_aggregate('{HOURLY.name}', now() - interval '2 days',"
            " now() - interval '8 hours')"
        )
    else:
        assert (await refresh_tables(conn)).errors == []
        await conn.execute(
            "UPDATE rollup_watermarks SET materialized_until = $1 WHERE rollup = $2",
            floor(now - timedelta(hours=8), HOUR),
            HOURLY.name,
        )
    health = await assess(conn, mode, Settings(storage_mode=mode))
    lag = health.rollup_lag[HOURLY.name]
    assert lag is not None and lag > timedelta(hours=8)
    lagging = [p for p in health.problems if p.startswith(f"{HOURLY.name}: watermark")]
    assert len(lagging) == 1 and "more than 4h (TELEMETRY_ROLLUP_MAX_LAG_SECONDS)" in lagging[0]
    result = await asyncio.to_thread(_telemetry, db_url, mode, "retention", "check")
    assert result.returncode == 1
    assert f"PROBLEM {lagging[0].split(' lags ')[0]} lags " in result.stdout

    # The metric says the same.
    metrics = Metrics()
    pool = await asyncpg.create_pool(db_url, min_size=1, max_size=2)
    try:
        await Maintenance(pool, Settings(storage_mode=mode), mode, metrics).run_once()
    finally:
        await pool.close()
    if mode == "timescale":
        # The round ran no refresh (nothing failed or overdue: the jobs are paused here).
        assert metrics.rollup_lag.labels(HOURLY.name)._value.get() > 8 * 3600
        await materialize(conn, mode)
    else:
        # The round refreshed the rollup tables from their watermark.
        assert metrics.rollup_lag.labels(HOURLY.name)._value.get() < 2 * 3600
    caught_up = await assess(conn, mode, Settings(storage_mode=mode))
    assert not [p for p in caught_up.problems if p.startswith(HOURLY.name)]


async def test_retention_show_names_each_rollup_and_its_mechanism(db_url: str, mode: StorageMode) -> None:
    result = await asyncio.to_thread(_telemetry, db_url, mode, "retention", "show")
    assert result.returncode == 0, result.stderr
    blocks = result.stdout.split("\n\n")
    hourly = next(b for b in blocks if b.startswith(f"{HOURLY.name}\n"))
    daily = next(b for b in blocks if b.startswith(f"{FLEET_DAILY.name}\n"))
    want = "continuous aggregate" if mode == "timescale" else "rollup table, refreshed from its watermark"
    assert want in hourly and want in daily
    assert "window            90d" in hourly and "window            400d" in daily
    assert "source must keep  1d2h30m" in hourly


def test_an_apache_build_uses_rollup_tables_and_show_says_why() -> None:
    assert mechanism_for("timescale", "timescale") == "continuous_aggregate"
    assert mechanism_for("timescale", "apache") == "rollup_table"
    assert mechanism_for("postgres", None) == "rollup_table"
    why = mechanism_reason("timescale", "rollup_table", "apache")
    assert "Apache build, no continuous aggregates" in why


async def test_a_maintenance_round_keeps_the_days_the_daily_rollup_has_not_closed(
    db_url: str, quiet: asyncpg.Connection, mode: StorageMode
) -> None:
    conn = quiet
    now = await server_now(conn)
    beats = fleet_beats(now, oldest=timedelta(hours=40), newest=timedelta(minutes=5))
    await insert(conn, mode, beats)
    await materialize(conn, mode)
    mechanism = await read_mechanism(conn)
    hourly_wm = await watermark(conn, mechanism, HOURLY)
    daily_wm = await watermark(conn, mechanism, FLEET_DAILY)
    assert hourly_wm is not None and daily_wm is not None and daily_wm <= hourly_wm
    if daily_wm == hourly_wm:
        # The server's clock decides the watermarks: between 01:00 and 02:00 UTC both are midnight.
        pytest.skip(
            "no day is open between the daily and the hourly watermark at this hour (01:00-02:00 UTC)"
        )

    pool = await asyncpg.create_pool(db_url, min_size=1, max_size=2)
    try:
        first = await Maintenance(pool, Settings(storage_mode=mode), mode).run_once()
        second = await Maintenance(pool, Settings(storage_mode=mode), mode).run_once()
    finally:
        await pool.close()
    assert first.recent_days is not None and not first.recent_days.skipped
    assert (first.recent_days.lo, first.recent_days.covered_until) == (daily_wm, hourly_wm)
    # The hourly watermark did not move: the second round computes nothing.
    assert second.recent_days is not None and second.recent_days.skipped

    rows = await conn.fetch("SELECT * FROM fleet_daily_recent ORDER BY day")
    want = expected_fleet([b for b in beats if b.ts < hourly_wm], DAY)
    assert [r["day"] for r in rows] == [d for d in sorted(want) if d >= daily_wm]
    for r in rows:
        assert (r["devices_seen"], r["heartbeats"], r["battery_avg"]) == want[r["day"]]
        assert r["covered_until"] == hourly_wm

    # Once the daily rollup closes a day, the recent table lets it go.
    await conn.execute(
        "INSERT INTO fleet_daily_recent (day, devices_seen, heartbeats, covered_until) VALUES ($1, 9, 9, $2)",
        daily_wm - DAY,
        hourly_wm,
    )
    again = await refresh_recent_days(conn, mechanism)
    assert again.skipped
    assert await conn.fetchval("SELECT min(day) FROM fleet_daily_recent") == daily_wm
