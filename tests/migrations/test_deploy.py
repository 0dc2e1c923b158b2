"""Schema changes you can deploy and undo: confirmed downgrades, backups, `migrate deploy`."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from tests.migrations.test_migrations import HEAD, PREVIOUS, user_tables
from tests.support.cli import child_env, run_telemetry
from tests.support.cluster import PROJECT_TABLES, migrate
from tests.support.serve_process import serving

# The revision before the one that added users.role and devices.banned_at (5b1f0c2d9e47): a
# downgrade to it drops columns that hold data.
BEFORE_ROLES = "aadd574780ab"


def deploy(
    url: str, mode: str, health_url: str, dump: Path, timeout: str
) -> subprocess.CompletedProcess[str]:
    """`telemetry migrate deploy`, backing up to `dump` and waiting `timeout` for `health_url`."""
    argv = ("migrate", "deploy", "--health-url", health_url, "--backup", str(dump), "--timeout", timeout)
    return telemetry(url, mode, *argv)


def telemetry(url: str, mode: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = child_env(DATABASE_URL=url, TELEMETRY_STORAGE_MODE=mode, TELEMETRY_LOG_LEVEL="WARNING")
    return run_telemetry(list(args), env)


async def revision(url: str) -> set[str]:
    conn = await asyncpg.connect(url)
    try:
        return {r[0] for r in await conn.fetch("SELECT version_num FROM alembic_version")}
    finally:
        await conn.close()


async def columns(url: str, table: str) -> set[str]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT column_name FROM information_schema.columns WHERE table_name = $1", table
        )
        return {r[0] for r in rows}
    finally:
        await conn.close()


async def test_downgrade_that_drops_needs_yes_and_otherwise_changes_nothing(db_url: str, mode: str) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute("INSERT INTO users (username) VALUES ('ann'), ('bo')")
    finally:
        await conn.close()
    before = await columns(db_url, "users")

    refused = await asyncio.to_thread(
        telemetry, db_url, mode, "migrate", "downgrade", "--revision", BEFORE_ROLES
    )
    assert refused.returncode == 2, refused.stderr
    assert "column users.role (2 rows)" in refused.stderr
    assert "column devices.banned_at (0 rows)" in refused.stderr
    # The rollups go too, tables (postgres) or continuous aggregates (timescale).
    assert "table device_heartbeats_hourly (0 rows)" in refused.stderr
    assert refused.stderr.splitlines()[-1] == (
        "telemetry migrate: downgrade not confirmed: pass --yes to drop the above (nothing was changed)"
    )
    assert await revision(db_url) == {HEAD}
    assert await columns(db_url, "users") == before

    everything = await asyncio.to_thread(
        telemetry, db_url, mode, "migrate", "downgrade", "--revision", "base"
    )
    assert everything.returncode == 2
    assert (
        "table users (2 rows)" in everything.stderr
        and "table device_heartbeats (0 rows)" in everything.stderr
    )
    assert await user_tables(db_url) == PROJECT_TABLES

    confirmed = await asyncio.to_thread(
        telemetry, db_url, mode, "migrate", "downgrade", "--yes", "--revision", BEFORE_ROLES
    )
    assert confirmed.returncode == 0, confirmed.stderr
    assert await revision(db_url) == {BEFORE_ROLES}
    assert "role" not in await columns(db_url, "users")


async def test_offline_downgrade_sql_needs_no_confirmation(db_url: str, mode: str) -> None:
    result = await asyncio.to_thread(
        telemetry, "", mode, "migrate", "downgrade", "--sql", "--mode", mode, "--revision", BEFORE_ROLES
    )
    assert result.returncode == 0, result.stderr
    assert "ALTER TABLE users DROP COLUMN role" in result.stdout


async def test_upgrade_with_backup_writes_a_custom_dump_first(
    empty_db: str, mode: str, tmp_path: Path
) -> None:
    await migrate(empty_db, mode, PREVIOUS)  # type: ignore[arg-type]
    dump = tmp_path / "before.dump"
    result = await asyncio.to_thread(telemetry, empty_db, mode, "migrate", "upgrade", "--backup", str(dump))
    assert result.returncode == 0, result.stderr
    assert dump.read_bytes()[:5] == b"PGDMP"
    assert await revision(empty_db) == {HEAD}


async def test_a_failed_backup_stops_before_migrating(empty_db: str, mode: str, tmp_path: Path) -> None:
    await migrate(empty_db, mode, PREVIOUS)  # type: ignore[arg-type]
    dump = tmp_path / "no-such-dir" / "before.dump"
    result = await asyncio.to_thread(telemetry, empty_db, mode, "migrate", "upgrade", "--backup", str(dump))
    assert result.returncode == 1
    assert result.stderr.startswith(f"telemetry migrate: backup to {dump} failed")
    assert len(result.stderr.splitlines()) == 1
    assert await revision(empty_db) == {PREVIOUS}


async def test_stamp_accepts_the_guides_tag_spelling(db_url: str, mode: str) -> None:
    result = await asyncio.to_thread(telemetry, db_url, mode, "migrate", "stamp", "--tag", PREVIOUS)
    assert result.returncode == 0, result.stderr
    assert await revision(db_url) == {PREVIOUS}


@pytest.fixture
def never_ready() -> Iterator[str]:
    """A health endpoint that answers, but never ready."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps({"status": "unavailable", "live": True, "ready": False, "schema": "behind"})
            self.send_response(503)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/health"
    finally:
        server.shutdown()


async def test_deploy_rolls_back_when_health_never_turns_ready(
    empty_db: str, mode: str, tmp_path: Path, never_ready: str
) -> None:
    await migrate(empty_db, mode, BEFORE_ROLES)  # type: ignore[arg-type]
    tables = await user_tables(empty_db)
    dump = tmp_path / "before.dump"
    result = await asyncio.to_thread(deploy, empty_db, mode, never_ready, dump, "3s")
    assert result.returncode == 1, result.stderr
    assert f"did not report ready at {HEAD} within 3s" in result.stderr
    assert f"schema back at {BEFORE_ROLES}" in result.stderr
    assert "pg_restore --clean --if-exists" in result.stderr and str(dump) in result.stderr
    assert dump.read_bytes()[:5] == b"PGDMP"
    assert await revision(empty_db) == {BEFORE_ROLES}
    assert await user_tables(empty_db) == tables
    assert "role" not in await columns(empty_db, "users")


async def test_deploy_succeeds_when_the_service_reports_ready_at_the_new_head(
    empty_db: str, mode: str, tmp_path: Path
) -> None:
    await migrate(empty_db, mode, PREVIOUS)  # type: ignore[arg-type]
    env = child_env()
    env |= {"DATABASE_URL": empty_db, "TELEMETRY_STORAGE_MODE": mode, "TELEMETRY_MIGRATE_ON_START": "0"}
    with contextlib.ExitStack() as stack:
        # Entered in a thread: waiting for "listening" must not block the event loop.
        port = await asyncio.to_thread(stack.enter_context, serving(env))
        dump = tmp_path / "before.dump"
        result = await asyncio.to_thread(
            deploy, empty_db, mode, f"http://127.0.0.1:{port}/health", dump, "30s"
        )
        assert result.returncode == 0, result.stderr
        assert f"deployed {HEAD}" in result.stderr
        assert await revision(empty_db) == {HEAD}
        assert dump.read_bytes()[:5] == b"PGDMP"


def _confirm_on_a_terminal(url: str, mode: str, answer: bytes) -> tuple[int, str]:
    import select

    env = child_env()
    env |= {"DATABASE_URL": url, "TELEMETRY_STORAGE_MODE": mode, "TELEMETRY_LOG_LEVEL": "WARNING"}
    master, slave = os.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "service", "migrate", "downgrade", "--revision", BEFORE_ROLES],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=env,
    )
    os.close(slave)
    seen = b""
    deadline = time.monotonic() + 120
    try:
        while b"type yes" not in seen:
            assert time.monotonic() < deadline, seen
            if select.select([master], [], [], 1)[0]:
                seen += os.read(master, 4096)
        os.write(master, answer)
        while True:
            if not select.select([master], [], [], 1)[0]:
                if proc.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(master)
    return proc.wait(timeout=60), seen.decode(errors="replace")


async def test_downgrade_asks_on_a_terminal(db_url: str, mode: str) -> None:
    code, out = await asyncio.to_thread(_confirm_on_a_terminal, db_url, mode, b"no\n")
    assert code == 2, out
    assert await revision(db_url) == {HEAD}
    code, out = await asyncio.to_thread(_confirm_on_a_terminal, db_url, mode, b"yes\n")
    assert code == 0, out
    assert "column users.role" in out
    assert await revision(db_url) == {BEFORE_ROLES}
