"""The database under test: an embedded PostgreSQL cluster with one fresh database per storage
mode, or a database the user points at with `--database-url`.

The embedded cluster is tuned the way a dedicated database host would be (shared buffers, WAL
size, no checkpoint storms during the pre-fill) but keeps durability settings at their defaults
(`fsync`, `synchronous_commit` on): a 2xx on a write means its rows are on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import asyncpg

from service.db import storage_mode
from service.db.embedded import EmbeddedPostgres
from service.db.urls import asyncpg_dsn
from service.settings import Settings, StorageMode

if TYPE_CHECKING:
    from aiohttp import web

T = TypeVar("T")

SERVER_OPTIONS = {
    "shared_buffers": "2GB",
    "effective_cache_size": "8GB",
    "maintenance_work_mem": "512MB",
    "max_wal_size": "16GB",
    "checkpoint_timeout": "30min",
    "max_connections": "200",
}


@contextlib.asynccontextmanager
async def connect(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """One asyncpg connection, closed on the way out (also when the body raises)."""
    conn = await asyncpg.connect(dsn)
    try:
        yield conn
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def connect_many(dsn: str, count: int) -> AsyncIterator[list[asyncpg.Connection]]:
    """`count` connections, all closed on the way out (also those opened before one failed)."""
    async with contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(connect(dsn)) for _ in range(count)]


def with_database(url: str, database: str) -> str:
    head, _, _ = url.rpartition("/")
    return f"{head}/{database}"


@dataclass
class EmbeddedCluster:
    """A throwaway cluster in a temporary directory; `close()` stops it and deletes it.

    The temporary directory is the cluster's data directory itself: `mkdtemp` makes it 0700,
    which the server's account could not enter if the cluster lived below it."""

    data_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="telemetry-bench-")))
    keep: bool = False

    def __post_init__(self) -> None:
        self.cluster = EmbeddedPostgres(self.data_dir, server_options=dict(SERVER_OPTIONS))
        self.url = self.cluster.start()

    @property
    def timescale_available(self) -> bool:
        return self.cluster.timescale_available

    @property
    def postmaster_pid(self) -> int | None:
        return self.cluster.running_pid()

    async def fresh_database(self, name: str) -> str:
        """Create (dropping any older one) database `name`; returns its URL."""
        async with connect(self.cluster.admin_url()) as conn:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await conn.execute(f'CREATE DATABASE "{name}"')
        return self.cluster.admin_url(name)

    async def drop_database(self, name: str) -> None:
        async with connect(self.cluster.admin_url()) as conn:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.cluster.stop()
        if not self.keep:
            shutil.rmtree(self.data_dir, ignore_errors=True)


async def migrated_database(cluster: EmbeddedCluster, name: str, mode: StorageMode) -> str:
    """A fresh database `name` migrated to head in `mode`; its URL. In timescale mode every job
    is unscheduled, so what a benchmark measures is its own work, not the scheduler's."""
    from service.migrations.migrator import Migrator

    url = await cluster.fresh_database(name)
    migrator = Migrator(settings=Settings(database_url=url, storage_mode=mode), database_url=url, mode=mode)
    await asyncio.to_thread(migrator.upgrade, "head")
    if mode == "timescale":
        async with connect(url) as conn:
            await conn.execute(
                "SELECT alter_job(job_id, scheduled => false) FROM timescaledb_information.jobs"
            )
    return url


@contextlib.asynccontextmanager
async def in_process_service(url: str, mode: StorageMode) -> AsyncIterator[tuple[str, web.Application]]:
    """The service on a free localhost port in this process, over `url` (migrated): its base
    URL and app, shut down (writer drained, pool closed) on the way out."""
    from aiohttp import web

    from service.app import create_app, create_pool
    from service.migrations.migrator import Migrator
    from service.serve import head_revisions

    settings = Settings(database_url=url, storage_mode=mode)
    heads = head_revisions(Migrator(settings=settings, database_url=url, mode=mode))
    pool = await create_pool(url, settings)
    runner = web.AppRunner(create_app(settings, pool, storage_mode=mode, head_revisions=heads))
    try:
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        yield f"http://127.0.0.1:{port}", runner.app
    finally:
        await runner.cleanup()
        await pool.close()


async def each_mode(
    bench: Callable[[EmbeddedCluster, StorageMode], Awaitable[T]], wanted: str = "auto"
) -> list[T]:
    """`bench` once per storage mode the embedded cluster offers (`wanted`: "auto" or a
    comma-separated list), in one throwaway cluster."""
    cluster = EmbeddedCluster()
    try:
        available: list[StorageMode] = (
            ["postgres", "timescale"] if cluster.timescale_available else ["postgres"]
        )
        return [await bench(cluster, m) for m in available if wanted == "auto" or m in wanted.split(",")]
    finally:
        cluster.close()


async def server_versions(url: str) -> dict[str, str | None]:
    async with connect(asyncpg_dsn(url)) as conn:
        pg = await conn.fetchval("SHOW server_version")
        ts = await conn.fetchval(
            "SELECT coalesce((SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'),"
            " (SELECT default_version FROM pg_available_extensions WHERE name = 'timescaledb'))"
        )
        settings = {
            name: await conn.fetchval(f"SHOW {name}")
            for name in ("shared_buffers", "synchronous_commit", "fsync", "max_connections")
        }
    return {"postgresql": pg, "timescaledb": ts, **settings}


async def storage_mode_of(url: str) -> str:
    """The mode the migrated database is in, as the service decides it."""
    async with connect(asyncpg_dsn(url)) as conn:
        return await storage_mode.detect(conn, "auto")
