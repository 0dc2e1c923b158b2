"""Migrations build the same schema in both storage modes, round-trip, and are safe to run at once."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from datetime import timedelta

import asyncpg
import pytest

from service.db.rollups import HOURLY_READ_COLUMNS
from service.db.time_series import TIME_SERIES_TABLES
from service.migrations.migrator import Migrator
from tests.db.hourly_indexes import device_indexes
from tests.support.cli import child_env
from tests.support.cluster import PROJECT_TABLES, TestServer, create_database, migrate, migrator_for

BASELINE = "7ac6ecbe4e31"
EARLIER = "862e82e33051"
PREVIOUS = "7d3b9e2c5a14"
HEAD = "3f6b1d8a2c47"
BEFORE_EVENT_LOG = "b7c1e4d9f2a6"
# The revision before the rollout funnel's counts (a9d3e5f7b1c2), which fill themselves from the
# rows already stored.
BEFORE_FUNNEL_COUNTS = "d5a91f3c7b20"
BEFORE_COVERING_INDEX = "a9d3e5f7b1c2"


async def user_tables(url: str) -> set[str]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            " UNION SELECT relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'public' AND c.relkind IN ('p', 'v')"
        )
    finally:
        await conn.close()
    return {r[0] for r in rows} - {"alembic_version"}


async def check(url: str, mode: str) -> tuple[int, str]:
    migrator = migrator_for(url, mode)  # type: ignore[arg-type]
    code = await asyncio.to_thread(migrator.check)
    return code, migrator.stdout.getvalue()  # type: ignore[attr-defined]


async def test_upgrade_check_downgrade_base_upgrade_check(empty_db: str, mode: str) -> None:
    await migrate(empty_db, mode)  # type: ignore[arg-type]
    code, out = await check(empty_db, mode)
    assert code == 0, out
    assert await user_tables(empty_db) == PROJECT_TABLES

    await asyncio.to_thread(migrator_for(empty_db, mode).downgrade, "base")  # type: ignore[arg-type]
    assert await user_tables(empty_db) == set()

    await migrate(empty_db, mode)  # type: ignore[arg-type]
    code, out = await check(empty_db, mode)
    assert code == 0, out
    assert await user_tables(empty_db) == PROJECT_TABLES


async def test_time_series_tables_are_partitioned_with_retention(
    db_url: str, mode: str, conn: asyncpg.Connection
) -> None:
    if mode == "timescale":
        hypertables = {
            r[0] for r in await conn.fetch("SELECT hypertable_name FROM timescaledb_information.hypertables")
        }
        assert hypertables == {t.name for t in TIME_SERIES_TABLES}
        jobs = await conn.fetch(
            "SELECT hypertable_name, (config->>'drop_after')::interval AS drop_after"
            " FROM timescaledb_information.jobs WHERE proc_name = 'policy_retention'"
        )
        by_table: dict[str, list[timedelta]] = {}
        for job in jobs:
            by_table.setdefault(job["hypertable_name"], []).append(job["drop_after"])
        assert by_table == {
            "device_heartbeats": [timedelta(days=2)],
            "fcm_dispatches": [timedelta(days=2)],
            "apk_download_events": [timedelta(days=7)],
            "events": [timedelta(days=7)],
            "device_heartbeats_hourly": [timedelta(days=90)],
            "fleet_daily": [timedelta(days=400)],
        }
    else:
        for table in TIME_SERIES_TABLES:
            kind = await conn.fetchval(
                "SELECT relkind::text FROM pg_class WHERE oid = $1::regclass", table.name
            )
            assert kind == "p", table.name
            covering = await conn.fetchval(
                "SELECT count(*) FROM telemetry_partition_bounds($1)"
                " WHERE range_start <= now() AND now() < range_end",
                table.name,
            )
            assert covering == 1, table.name
            ahead = await conn.fetchval(
                "SELECT max(range_end) FROM telemetry_partition_bounds($1)", table.name
            )
            now = await conn.fetchval("SELECT now()")
            assert ahead - now >= timedelta(hours=23), table.name
    windows = {
        r["table_name"]: r["drop_after"]
        for r in await conn.fetch("SELECT table_name, drop_after FROM retention_policies")
    }
    assert windows == {
        "device_heartbeats": timedelta(days=2),
        "fcm_dispatches": timedelta(days=2),
        "apk_download_events": timedelta(days=7),
        "events": timedelta(days=7),
        "enrollment_events": timedelta(days=90),
        "commands": timedelta(days=90),
        "command_pushes": timedelta(days=90),
        "bulk_dispatches": timedelta(days=90),
        "operator_audit": timedelta(days=400),
        "device_heartbeats_hourly": timedelta(days=90),
        "fleet_daily": timedelta(days=400),
    }


async def test_retention_windows_come_from_configuration_at_migrate_time(empty_db: str, mode: str) -> None:
    from service.settings import RetentionWindows
    from tests.support.cluster import settings_for

    settings = settings_for(
        empty_db,
        mode,
        retention=RetentionWindows(device_heartbeats=timedelta(hours=36)),  # type: ignore[arg-type]
    )
    await migrate(empty_db, mode, settings=settings)  # type: ignore[arg-type]
    conn = await asyncpg.connect(empty_db)
    try:
        window = await conn.fetchval(
            "SELECT drop_after FROM retention_policies WHERE table_name = 'device_heartbeats'"
        )
        assert window == timedelta(hours=36)
        if mode == "timescale":
            job_window = await conn.fetchval(
                "SELECT (config->>'drop_after')::interval FROM timescaledb_information.jobs"
                " WHERE proc_name = 'policy_retention' AND hypertable_name = 'device_heartbeats'"
            )
            assert job_window == timedelta(hours=36)
    finally:
        await conn.close()


async def test_check_names_the_pending_revision_when_one_behind(empty_db: str, mode: str) -> None:
    await migrate(empty_db, mode, PREVIOUS)  # type: ignore[arg-type]
    code, out = await check(empty_db, mode)
    assert code == 1
    assert HEAD in out and "pending" in out
    assert PREVIOUS not in out and EARLIER not in out and BASELINE not in out


async def test_upgrade_to_head_counts_the_rollout_rows_already_stored(empty_db: str, mode: str) -> None:
    await migrate(empty_db, mode, BEFORE_FUNNEL_COUNTS)  # type: ignore[arg-type]
    conn = await asyncpg.connect(empty_db)
    try:
        await conn.execute(
            "INSERT INTO devices (id, token_hash) SELECT 'd' || i, md5(i::text) FROM generate_series(1, 40) i"
        )
        await conn.execute(
            "INSERT INTO apk_versions (package_name, version_code, version_name, build_id)"
            " VALUES ('p', 1, '1.0', 'b1'), ('p', 2, '2.0', 'b2')"
        )
        if mode == "postgres":
            await conn.execute(
                "SELECT telemetry_ensure_partitions('apk_download_events', interval '1 day',"
                " now() - interval '3 days', now())"
            )
        await conn.execute(
            "INSERT INTO apk_download_events (ts, build_id, device_id, outcome)"
            " SELECT now() - make_interval(mins => i * 37), 'b' || (1 + i % 2), 'd' || (1 + i % 40),"
            " (ARRAY['started', 'completed', 'failed'])[1 + i % 3] FROM generate_series(1, 200) i"
        )
        await conn.execute(
            "INSERT INTO apk_installations (device_id, apk_version_id, status, verified)"
            " SELECT 'd' || i, v.id, (ARRAY['installing', 'installed', 'failed'])[1 + i % 3], i % 4 = 0"
            " FROM generate_series(1, 40) i, apk_versions v WHERE i % 2 = 0 OR v.build_id = 'b1'"
        )
    finally:
        await conn.close()
    await migrate(empty_db, mode)  # type: ignore[arg-type]
    conn = await asyncpg.connect(empty_db)
    try:
        downloads = "SELECT build_id, outcome, count(*) FROM apk_download_events GROUP BY 1, 2"
        counted = "SELECT build_id, outcome, sum(events) FROM apk_download_counts GROUP BY 1, 2"
        assert set(map(tuple, await conn.fetch(downloads))) == set(map(tuple, await conn.fetch(counted)))
        installs = "SELECT apk_version_id, status, verified, count(*) FROM apk_installations GROUP BY 1, 2, 3"
        counted = (
            "SELECT apk_version_id, status, verified, sum(installations) FROM apk_installation_counts"
            " GROUP BY 1, 2, 3"
        )
        assert set(map(tuple, await conn.fetch(installs))) == set(map(tuple, await conn.fetch(counted)))
    finally:
        await conn.close()


async def test_downgrade_and_upgrade_move_the_hourly_rollup_between_its_old_index_and_the_covering_one(
    empty_db: str, mode: str
) -> None:
    await migrate(empty_db, mode)  # type: ignore[arg-type]
    conn = await asyncpg.connect(empty_db)
    try:
        (covering,) = await device_indexes(conn, mode)
        assert covering.key == ("device_id", "hour") and covering.included == HOURLY_READ_COLUMNS

        downgrade = migrator_for(empty_db, mode).downgrade  # type: ignore[arg-type]
        await asyncio.to_thread(downgrade, BEFORE_COVERING_INDEX)
        (old,) = await device_indexes(conn, mode)
        assert old.key == ("device_id", "hour") and old.included == ()
        # The primary key (table), or TimescaleDB's own group index back under its own name.
        assert old.primary_key if mode == "postgres" else old.name.endswith("_device_id_hour_idx")

        await migrate(empty_db, mode)  # type: ignore[arg-type]
        assert await device_indexes(conn, mode) == [covering]
    finally:
        await conn.close()
    code, out = await check(empty_db, mode)
    assert code == 0, out


async def test_device_events_become_the_event_log_and_come_back_on_downgrade(
    empty_db: str, mode: str
) -> None:
    await migrate(empty_db, mode, BEFORE_EVENT_LOG)  # type: ignore[arg-type]
    conn = await asyncpg.connect(empty_db)
    try:
        await conn.execute(
            "INSERT INTO device_events (device_id, event_type, details, created_at) VALUES"
            " ('d-1', 'enrolled', '{\"scope\": null}', now() - interval '1 hour'),"
            " ('d-1', 'credential_revoked', '{\"by\": \"alice\"}', now() - interval '30 minutes'),"
            " ('d-2', 'went_offline', NULL, now() - interval '100 days')"  # past the log's window
        )
        ids = [r["id"] for r in await conn.fetch("SELECT id FROM device_events ORDER BY id")]
        await migrate(empty_db, mode)  # type: ignore[arg-type]
        moved = await conn.fetch("SELECT id, device_id, type, payload::text FROM events ORDER BY id")
        assert [(r["id"], r["device_id"], r["type"]) for r in moved] == [
            (ids[0], "d-1", "device.enrolled"),
            (ids[1], "d-1", "device.revoked"),
        ]
        assert "device_events" not in await user_tables(empty_db)
        # New ids carry on after the old ones.
        await conn.execute("INSERT INTO events (device_id, type) VALUES ('d-1', 'device.reinstated')")
        assert await conn.fetchval("SELECT max(id) FROM events") > ids[-1]

        await asyncio.to_thread(migrator_for(empty_db, mode).downgrade, BEFORE_EVENT_LOG)  # type: ignore[arg-type]
        back = await conn.fetch("SELECT device_id, event_type FROM device_events ORDER BY id")
        assert [(r["device_id"], r["event_type"]) for r in back] == [
            ("d-1", "enrolled"),
            ("d-1", "credential_revoked"),
            ("d-1", "reinstated"),
        ]
        window = await conn.fetchval(
            "SELECT drop_after FROM retention_policies WHERE table_name = 'device_events'"
        )
        assert window == timedelta(days=90)
        assert "events" not in await user_tables(empty_db)
    finally:
        await conn.close()
    await migrate(empty_db, mode)  # type: ignore[arg-type]
    code, out = await check(empty_db, mode)
    assert code == 0, out


def _telemetry(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service", *args], capture_output=True, text=True, env=env, timeout=300
    )


def _env(url: str, mode: str) -> dict[str, str]:
    env = child_env()
    env.update(DATABASE_URL=url, TELEMETRY_STORAGE_MODE=mode, TELEMETRY_LOG_LEVEL="WARNING")
    return env


async def test_eight_concurrent_upgrades_all_succeed(empty_db: str, mode: str) -> None:
    env = _env(empty_db, mode)
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "service",
            "migrate",
            "upgrade",
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(8)
    ]
    results = await asyncio.gather(*(p.communicate() for p in procs))
    for proc, (_, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0, err.decode()
        assert b"already exists" not in err
    code, out = await check(empty_db, mode)
    assert code == 0, out
    assert await user_tables(empty_db) == PROJECT_TABLES


async def test_check_cli_exit_codes(empty_db: str, mode: str) -> None:
    env = _env(empty_db, mode)
    await migrate(empty_db, mode, BASELINE)  # type: ignore[arg-type]
    behind = await asyncio.to_thread(_telemetry, "migrate", "check", env=env)
    assert behind.returncode == 1
    assert HEAD in behind.stdout
    up = await asyncio.to_thread(_telemetry, "migrate", "upgrade", env=env)
    assert up.returncode == 0, up.stderr
    clean = await asyncio.to_thread(_telemetry, "migrate", "check", env=env)
    assert clean.returncode == 0, clean.stdout + clean.stderr


@pytest.mark.skipif(shutil.which("psql") is None, reason="psql client not installed")
async def test_offline_sql_applied_with_psql_is_at_head_and_clean(pg_server: TestServer, mode: str) -> None:
    url = await create_database(pg_server)
    env = _env("", mode)
    del env["DATABASE_URL"]
    sql = await asyncio.to_thread(_telemetry, "migrate", "--mode", mode, "upgrade", "--sql", env=env)
    assert sql.returncode == 0, sql.stderr
    assert "CREATE TABLE device_heartbeats" in sql.stdout
    applied = await asyncio.to_thread(
        subprocess.run,
        ["psql", "-X", "-v", "ON_ERROR_STOP=1", "-q", url],
        input=sql.stdout,
        capture_output=True,
        text=True,
    )
    assert applied.returncode == 0, applied.stderr
    code, out = await check(url, mode)
    assert code == 0, out
    assert await user_tables(url) == PROJECT_TABLES


async def test_offline_sql_requires_a_mode(empty_db: str, mode: str) -> None:
    env = _env("", "auto")
    del env["DATABASE_URL"]
    result = await asyncio.to_thread(_telemetry, "migrate", "upgrade", "--sql", env=env)
    assert result.returncode == 2
    assert "--mode" in result.stderr


def test_history_lists_the_revisions_in_order() -> None:
    import io

    from service.settings import Settings

    out = io.StringIO()
    Migrator(settings=Settings(), database_url=None, stdout=out).history()
    lines = out.getvalue().strip().splitlines()
    assert lines[0].startswith(f"{PREVIOUS} -> {HEAD} (head)")
    assert lines[1].startswith(f"{EARLIER} -> {PREVIOUS}")
    assert lines[-2].startswith(f"{BASELINE} -> ")
    assert lines[-1].startswith(f"<base> -> {BASELINE}")


async def test_check_names_a_function_or_trigger_that_differs_from_the_service_modules(
    empty_db: str, mode: str
) -> None:
    await migrate(empty_db, mode)  # type: ignore[arg-type]
    conn = await asyncpg.connect(empty_db)
    try:
        # What a hand edit, or a live module changed without a revision, leaves behind.
        await conn.execute(
            "CREATE OR REPLACE FUNCTION telemetry_dispatch_key_cutoff() RETURNS timestamptz"
            " LANGUAGE sql STABLE AS $fn$ SELECT now() $fn$"
        )
        await conn.execute("DROP TRIGGER apk_installations_count_delete ON apk_installations")
        await conn.execute("CREATE FUNCTION telemetry_by_hand() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$")
    finally:
        await conn.close()
    code, out = await check(empty_db, mode)
    assert code == 1, out
    assert "function telemetry_dispatch_key_cutoff: differs from its definition" in out
    assert "trigger apk_installations_count_delete: missing from the database" in out
    assert "function telemetry_by_hand: in the database, defined by no module" in out
    assert "telemetry_expire_dispatch_keys" not in out  # the unchanged ones are not named
