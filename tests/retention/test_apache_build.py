"""An Apache-only TimescaleDB (`timescaledb.license = 'apache'`, a server setting: a session
cannot change it) has hypertables but no retention policies, jobs, continuous aggregates or
compression (all community-licensed). Such a server runs in postgres mode: native partitions,
rollup tables and retention kept by the service's maintenance; forcing timescale mode there
fails before anything is built, naming the license."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import asyncpg
import pytest

from service.api.history import device_history, fleet_history
from service.db.rollups import HOURLY
from service.db.storage_mode import detect
from service.retention.maintenance import Maintenance
from service.retention.rollups import read_mechanism, watermark
from service.settings import Settings
from tests.retention.history import server_now
from tests.retention.test_rollups import _telemetry, expected_fleet, expected_hours, fleet_beats, insert
from tests.support.cluster import TestServer, migrate, throwaway_cluster

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def apache_server(pg_server: TestServer) -> Iterator[str]:
    """A second throwaway cluster started with the Apache license; its admin URL."""
    if not pg_server.timescale:
        pytest.skip(f"TimescaleDB unavailable: {pg_server.why_no_timescale}")
    tmp = Path(tempfile.mkdtemp(prefix="telemetry-test-apache-"))
    cluster = throwaway_cluster(
        tmp, **{"timescaledb.license": "apache", "timescaledb.max_background_workers": "2"}
    )
    cluster.start()
    try:
        yield cluster.admin_url()
    finally:
        cluster.stop("immediate")
        shutil.rmtree(tmp, ignore_errors=True)


async def fresh_database(admin_url: str) -> str:
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute("DROP DATABASE IF EXISTS apache_build WITH (FORCE)")
        await conn.execute("CREATE DATABASE apache_build")
    finally:
        await conn.close()
    base, _, _ = admin_url.rpartition("/")
    return f"{base}/apache_build"


async def test_forcing_timescale_on_an_apache_build_fails_naming_the_license(apache_server: str) -> None:
    url = await fresh_database(apache_server)
    with pytest.raises(Exception, match=r"timescaledb.license = 'apache'"):
        await migrate(url, "timescale")
    conn = await asyncpg.connect(url)
    try:  # nothing was half-built
        assert await conn.fetchval("SELECT to_regclass('device_heartbeats')") is None
    finally:
        await conn.close()


async def test_an_apache_build_runs_in_postgres_mode_with_rollups_kept_by_the_maintenance(
    apache_server: str,
) -> None:
    url = await fresh_database(apache_server)
    await migrate(url, "auto")  # type: ignore[arg-type]
    conn = await asyncpg.connect(url)
    try:
        assert await conn.fetchval("SHOW timescaledb.license") == "apache"
        assert await detect(conn, "auto") == "postgres"
        assert (
            await conn.fetchval("SELECT relkind::text FROM pg_class WHERE relname = 'device_heartbeats'")
            == "p"
        )
        assert await read_mechanism(conn) == "rollup_table"
        now = await server_now(conn)
        beats = fleet_beats(now, oldest=timedelta(hours=30), newest=timedelta(minutes=5))
        await insert(conn, "postgres", beats)

        pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
        try:
            maintenance = Maintenance(pool, Settings(storage_mode="auto"), None)
            report = await maintenance.run_once()
        finally:
            await pool.close()
        assert report.ran and report.mode == "postgres" and report.errors == ()
        assert report.rollups is not None and report.rollups.errors == []
        hourly_wm = await watermark(conn, "rollup_table", HOURLY)
        assert hourly_wm is not None and now - 2 * HOUR <= hourly_wm <= now - HOUR

        rows = await conn.fetch(f"SELECT * FROM {HOURLY.name}")
        stored = {(r["device_id"], r["hour"]): r["heartbeats"] for r in rows}
        want = {k: v["heartbeats"] for k, v in expected_hours(beats).items() if k[1] < hourly_wm}
        assert want and stored == want

        history = await device_history(conn, "d2", now - 2 * DAY, now, "1h")
        assert sum(b.heartbeats for b in history.buckets) == sum(1 for b in beats if b.device_id == "d2")
        fleet = await fleet_history(conn, now - 2 * DAY, now, "1d")
        assert {b.start: (b.devices_seen, b.heartbeats) for b in fleet.buckets} == {
            day: v[:2] for day, v in expected_fleet([b for b in beats if b.ts < hourly_wm], DAY).items()
        }
    finally:
        await conn.close()

    shown = await asyncio.to_thread(_telemetry, url, "auto", "retention", "show")  # type: ignore[arg-type]
    assert shown.returncode == 0, shown.stderr
    assert "partitions" in shown.stdout


HOUR, DAY = timedelta(hours=1), timedelta(days=1)
