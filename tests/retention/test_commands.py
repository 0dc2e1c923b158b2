"""`telemetry retention …` as operators and cron run it: output, messages and exit codes."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from datetime import timedelta

import asyncpg
import pytest

from service.db.time_series import HEARTBEATS
from service.retention.policies import read_policy
from service.settings import StorageMode
from tests.retention.history import insert_at, server_now, stored_times
from tests.support.cli import child_env
from tests.support.cluster import TestServer, create_database
from tests.support.jobs import pause_background_jobs


def _env(url: str, mode: str) -> dict[str, str]:
    env = child_env()
    env.update(DATABASE_URL=url, TELEMETRY_STORAGE_MODE=mode, TELEMETRY_LOG_LEVEL="WARNING")
    return env


async def telemetry(url: str, mode: str, *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "service", "retention", *args],
        capture_output=True,
        text=True,
        env=_env(url, mode),
        timeout=120,
    )


def blocks(show_output: str) -> dict[str, dict[str, str]]:
    """`show`'s plain output (stdout is not a TTY here) as {table: {label: value}}."""
    parsed: dict[str, dict[str, str]] = {}
    current: dict[str, str] = {}
    for line in show_output.splitlines():
        if line and not line.startswith(" "):
            current = parsed.setdefault(line.strip(), {})
        elif line.strip():
            label, value = line.strip().split("  ", 1)
            current[label] = value.strip()
    return parsed


async def test_set_then_show(db_url: str, mode: StorageMode) -> None:
    result = await telemetry(db_url, mode, "set", "device_heartbeats", "36h")
    assert result.returncode == 0, result.stderr
    assert "device_heartbeats: window 1d12h (was 2d)" in result.stdout

    shown = await telemetry(db_url, mode, "show")
    assert shown.returncode == 0, shown.stderr
    tables = blocks(shown.stdout)
    assert set(tables) == {
        "device_heartbeats",
        "fcm_dispatches",
        "apk_download_events",
        "fcm_dispatch_keys",
        "events",
        "enrollment_events",
        "commands",
        "command_pushes",
        "bulk_dispatches",
        "operator_audit",
        "device_heartbeats_hourly",
        "fleet_daily",
    }
    heartbeats = tables["device_heartbeats"]
    assert heartbeats["mode"] == mode
    assert heartbeats["window"] == "1d12h"
    assert heartbeats["interval"] == "2h"
    assert tables["apk_download_events"]["window"] == "7d"
    for label in ("max overshoot", "job", "schedule", "last run", "last status", "next run", "oldest row"):
        assert label in heartbeats
    assert ("chunks" if mode == "timescale" else "partitions") in heartbeats
    if mode == "timescale":
        assert heartbeats["job"].isdigit()
        assert heartbeats["schedule"] == "every 1d"
        assert heartbeats["max overshoot"].startswith("1d2h")
        assert tables["fcm_dispatch_keys"]["schedule"] == "every 1h"
    else:
        assert heartbeats["schedule"] == "every 5m"
        assert heartbeats["max overshoot"].startswith("2h5m")


async def test_run_reports_what_it_dropped_and_drops_it(db_url: str, mode: StorageMode) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        if mode == "timescale":
            await pause_background_jobs(conn)
        policy = await read_policy(conn, mode, HEARTBEATS)
        now = await server_now(conn)
        old = now - policy.window - 3 * policy.interval
        await insert_at(conn, mode, HEARTBEATS, [old, old + timedelta(seconds=10), now])

        dry = await telemetry(db_url, mode, "run", "device_heartbeats", "--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert "device_heartbeats: would drop" in dry.stdout and "(2 rows)" in dry.stdout
        assert len(await stored_times(conn, HEARTBEATS)) == 3

        run = await telemetry(db_url, mode, "run", "device_heartbeats")
        assert run.returncode == 0, run.stderr
        assert "device_heartbeats: dropped" in run.stdout and "(2 rows)" in run.stdout
        assert "fcm_dispatches" not in run.stdout, "only the named table runs"
        if mode == "postgres":
            # The rollup tables are refreshed first, so the guard lets the old partition go.
            assert "device_heartbeats_hourly: refreshed [" in run.stdout
        assert await stored_times(conn, HEARTBEATS) == [now]

        everything = await telemetry(db_url, mode, "run")
        assert everything.returncode == 0, everything.stderr
        for name in ("device_heartbeats", "fcm_dispatches", "apk_download_events", "fcm_dispatch_keys"):
            assert f"{name}: " in everything.stdout
    finally:
        await conn.close()


@pytest.mark.parametrize("window", ["2x", "-3h", "0", "0s", "d", "2 days", ""])
async def test_set_refuses_a_malformed_window_and_changes_nothing(
    db_url: str, mode: StorageMode, window: str
) -> None:
    # `--`: otherwise argparse takes "-3h" for an option before our parser sees it.
    result = await telemetry(db_url, mode, "set", "device_heartbeats", "--", window)
    assert result.returncode == 2
    assert "telemetry retention: invalid window" in result.stderr
    assert "2d, 36h, 90m" in result.stderr or "longer than zero" in result.stderr
    conn = await asyncpg.connect(db_url)
    try:
        assert (await read_policy(conn, mode, HEARTBEATS)).window == timedelta(days=2)
    finally:
        await conn.close()


@pytest.mark.parametrize("verb", [["set", "heartbeats", "2d"], ["run", "fcm_dispatch_keys"]])
async def test_unknown_table_is_refused_with_the_valid_names(
    db_url: str, mode: StorageMode, verb: list[str]
) -> None:
    result = await telemetry(db_url, mode, *verb)
    assert result.returncode == 2
    assert "unknown table" in result.stderr
    assert "device_heartbeats, fcm_dispatches, apk_download_events" in result.stderr


async def test_a_storage_mode_forced_against_the_database_is_refused(
    db_url: str, mode: StorageMode, pg_server: TestServer
) -> None:
    other = "postgres" if mode == "timescale" else "timescale"
    result = await telemetry(db_url, other, "show")
    assert result.returncode == 2
    if other == "timescale" and not pg_server.timescale:
        # A server without TimescaleDB (the PostgreSQL 18 wheel) refuses it before the tables
        # are looked at.
        assert "TimescaleDB cannot be used here" in result.stderr
    else:
        assert f"built in {mode} mode" in result.stderr


async def test_an_unmigrated_database_says_to_migrate(pg_server: TestServer, mode: StorageMode) -> None:
    url = await create_database(pg_server)
    result = await telemetry(url, mode, "run")
    assert result.returncode == 1
    assert "telemetry migrate upgrade" in result.stderr


async def test_an_unknown_database_fails_with_one_line_and_exit_2(
    pg_server: TestServer, mode: StorageMode
) -> None:
    result = await telemetry(pg_server.url_for("no_such_database"), mode, "show")
    assert result.returncode == 2
    assert result.stderr.startswith('telemetry retention: database "no_such_database" does not exist')
    assert len(result.stderr.splitlines()) == 1


async def test_the_terminal_rendering_shows_what_the_plain_one_does(
    db_url: str, mode: StorageMode, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`show` on a terminal (rich grids) and piped (plain blocks): the same labels and values."""
    monkeypatch.setenv("COLUMNS", "500")  # a terminal wide enough for every column
    import io

    from service.retention.show import collect, collect_audit, render_plain, render_rich
    from service.settings import Settings

    settings = Settings(database_url=db_url, storage_mode=mode)
    conn = await asyncpg.connect(db_url)
    try:
        tables, keys = await collect(conn, mode, settings)
        audits = await collect_audit(conn, settings)
    finally:
        await conn.close()
    plain, rich = io.StringIO(), io.StringIO()
    render_plain(tables, keys, plain, audits)
    render_rich(tables, keys, rich, audits)
    grid = rich.getvalue()
    shown = blocks(plain.getvalue())
    assert audits and tables  # both grids are drawn
    for name, fields in shown.items():
        assert name in grid
        for label, value in fields.items():
            assert label in grid and value.split()[0] in grid, (name, label, value)
