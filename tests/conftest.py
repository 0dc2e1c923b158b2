"""Test harness: a real PostgreSQL cluster started for the session (or TEST_DATABASE_URL).

`TEST_ENGINE=postgres|timescale|auto` picks the storage modes: `auto` (default) runs every mode
the server can run and skips the others, saying why; a mode named explicitly that cannot run
fails the run. Tests that take the `mode` fixture run once per mode.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from aiohttp.test_utils import TestServer as HttpTestServer

from service.admin import create_operator
from service.app import create_app, create_pool
from service.db.embedded import EmbeddedPostgres
from service.migrations.commands import Migrator
from service.serve import head_revisions
from service.settings import Settings, StorageMode

ENGINE = os.environ.get("TEST_ENGINE", "auto")
if ENGINE not in ("auto", "postgres", "timescale"):
    raise pytest.UsageError(f"TEST_ENGINE must be auto, postgres or timescale, not {ENGINE!r}")


# Every table the migrations create (and downgrade base removes).
PROJECT_TABLES = {
    "users",
    "sessions",
    "devices",
    "enrollment_tokens",
    "device_heartbeats",
    "fcm_dispatches",
    "fcm_dispatch_keys",
    "apk_download_events",
    "apk_versions",
    "apk_installations",
    "device_events",
    "device_presence",
    "enrollment_events",
    "commands",
    "device_app_versions",
    "retention_policies",
    "rollup_watermarks",
    "fleet_daily_recent",
    "apk_download_counts",
    "apk_installation_counts",
    "apk_rollout_snapshots",
    # Tables in postgres mode, continuous aggregates (views) in timescale mode.
    "device_heartbeats_hourly",
    "fleet_daily",
}


@dataclass
class TestServer:
    __test__ = False

    admin_url: str  # a URL to the maintenance database, used to create per-test databases
    timescale: bool
    why_no_timescale: str
    cluster: EmbeddedPostgres | None

    def url_for(self, database: str) -> str:
        base, _, _ = self.admin_url.rpartition("/")
        return f"{base}/{database}"


async def _probe_timescale(admin_url: str) -> tuple[bool, str]:
    conn = await asyncpg.connect(admin_url)
    try:
        available = await conn.fetchval(
            "SELECT count(*) FROM pg_available_extensions WHERE name = 'timescaledb'"
        )
        preload = await conn.fetchval("SELECT current_setting('shared_preload_libraries')")
    finally:
        await conn.close()
    if not available:
        return False, "TimescaleDB is not installed on this PostgreSQL server"
    if "timescaledb" not in preload:
        return False, "TimescaleDB is installed but not in shared_preload_libraries"
    return True, ""


@pytest.fixture(scope="session")
def pg_server() -> Iterator[TestServer]:
    given = os.environ.get("TEST_DATABASE_URL")
    if given:
        ok, why = asyncio.run(_probe_timescale(given))
        yield TestServer(given, ok, why, None)
        return
    tmp = Path(tempfile.mkdtemp(prefix="telemetry-test-pg-"))
    cluster = EmbeddedPostgres(
        tmp,
        server_options={
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "300",
            "timescaledb.max_background_workers": "4",
        },
    )
    cluster.start()
    try:
        ok, why = asyncio.run(_probe_timescale(cluster.admin_url()))
        yield TestServer(cluster.admin_url(), ok, why, cluster)
    finally:
        cluster.stop("immediate")
        shutil.rmtree(tmp, ignore_errors=True)


def _modes() -> list[str]:
    return ["postgres", "timescale"] if ENGINE == "auto" else [ENGINE]


@pytest.fixture(params=_modes())
def mode(request: pytest.FixtureRequest, pg_server: TestServer) -> StorageMode:
    wanted: StorageMode = request.param
    if wanted == "timescale" and not pg_server.timescale:
        if ENGINE == "timescale":
            pytest.fail(f"TEST_ENGINE=timescale but {pg_server.why_no_timescale}")
        pytest.skip(f"timescale mode skipped: {pg_server.why_no_timescale}")
    return wanted


async def create_database(pg_server: TestServer) -> str:
    name = f"t_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(pg_server.admin_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return pg_server.url_for(name)


def settings_for(url: str, mode: StorageMode, **overrides: object) -> Settings:
    return Settings(database_url=url, storage_mode=mode, **overrides)  # type: ignore[arg-type]


def migrator_for(url: str, mode: StorageMode, settings: Settings | None = None) -> Migrator:
    import io

    return Migrator(
        settings=settings or settings_for(url, mode), database_url=url, mode=mode, stdout=io.StringIO()
    )


async def migrate(
    url: str, mode: StorageMode, revision: str = "head", settings: Settings | None = None
) -> None:
    await asyncio.to_thread(migrator_for(url, mode, settings).upgrade, revision)


@pytest.fixture
async def empty_db(pg_server: TestServer, mode: StorageMode) -> str:
    return await create_database(pg_server)


@pytest.fixture
async def db_url(empty_db: str, mode: StorageMode) -> str:
    """A database migrated to head in `mode`."""
    await migrate(empty_db, mode)
    return empty_db


@pytest.fixture
async def conn(db_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(db_url)
    try:
        yield connection
    finally:
        await connection.close()


@dataclass
class HeartbeatsLock:
    """A connection of its own that can hold ACCESS EXCLUSIVE on device_heartbeats: the
    writer's INSERT (and any read of the table) then waits exactly as on a stalled server."""

    conn: asyncpg.Connection
    _tx: asyncpg.transaction.Transaction | None = None

    async def hold(self) -> None:
        self._tx = self.conn.transaction()
        await self._tx.start()
        await self.conn.execute("LOCK TABLE device_heartbeats IN ACCESS EXCLUSIVE MODE")

    async def release(self) -> None:
        if self._tx is not None:
            await self._tx.rollback()
            self._tx = None


@pytest.fixture
async def heartbeats_lock(db_url: str) -> AsyncIterator[HeartbeatsLock]:
    lock = HeartbeatsLock(await asyncpg.connect(db_url))
    try:
        yield lock
    finally:
        await lock.conn.close()


@pytest.fixture(scope="session")
def plain_cluster() -> Iterator[EmbeddedPostgres]:
    """A second, small cluster without TimescaleDB preloaded, on a fixed port: for a forced
    timescale mode the server cannot honour, and for tests that stop and start their database.
    In its own temporary directory under /tmp, which the `postgres` user can reach (pytest's
    tmp_path lies under a 0700 directory, and the cluster refuses rather than chmod it)."""
    from service.db.embedded import free_port

    tmp = Path(tempfile.mkdtemp(prefix="telemetry-plain-pg-"))
    cluster = EmbeddedPostgres(
        tmp,
        port=free_port(),
        preload_timescale=False,
        server_options={"shared_preload_libraries": "", "fsync": "off", "max_connections": "50"},
    )
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop("immediate")
        shutil.rmtree(tmp, ignore_errors=True)


# --- the app on a migrated database, over real HTTP (api, fuzz and security tests) ---------


@dataclass
class Api:
    client: TestClient
    db_url: str
    operator_token: str
    app: Any

    def op(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.operator_token}"}

    async def mint(self, **spec: object) -> dict[str, Any]:
        """A new enrollment token through the API: `{"token", "id", …}`."""
        r = await self.client.post("/v1/enrollment-tokens", json=spec, headers=self.op())
        assert r.status == 201, await r.text()
        return await r.json()

    async def enroll(self, device_id: str, *, bound: bool = False) -> str:
        """Enroll `device_id` through the API (with a token bound to it when `bound`: needed to
        re-enroll an existing id); returns its device token."""
        token = (await self.mint(**({"device_id": device_id} if bound else {})))["token"]
        r = await self.client.post("/v1/enroll", json={"enrollment_token": token, "device_id": device_id})
        assert r.status == 201, await r.text()
        return (await r.json())["device_token"]

    async def count(self, sql: str, *args: Any) -> int:
        conn = await asyncpg.connect(self.db_url)
        try:
            return int(await conn.fetchval(sql, *args))
        finally:
            await conn.close()


@pytest.fixture
def app_settings(db_url: str, mode: StorageMode) -> Any:
    return settings_for(db_url, mode)


@pytest.fixture
async def api(db_url: str, mode: StorageMode, app_settings: Any) -> AsyncIterator[Api]:
    settings = replace(app_settings, database_url=db_url)
    pool = await create_pool(db_url, settings)
    conn = await asyncpg.connect(db_url)
    try:
        token = await create_operator(conn, "alice")
    finally:
        await conn.close()
    heads = head_revisions(Migrator(settings=settings, database_url=db_url))
    app = create_app(settings, pool, storage_mode=mode, head_revisions=heads)
    client = TestClient(HttpTestServer(app))
    await client.start_server()
    try:
        yield Api(client, db_url, token, app)
    finally:
        await client.close()
        await pool.close()


@contextlib.contextmanager
def serving(env: dict[str, str], *args: str) -> Iterator[int]:
    """`telemetry serve` as its own process on a free port with `env` (plus `args`), from the
    moment it says it is listening until SIGTERM on exit; yields the port."""
    from service.db.embedded import free_port

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "service", "serve", "--port", str(port), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        line = ""
        while "telemetry listening on" not in line:
            assert time.monotonic() < deadline and proc.poll() is None, line
            line = proc.stdout.readline()
        yield port
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
