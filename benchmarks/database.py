"""The database under test: an embedded PostgreSQL cluster with one fresh database per storage
mode, or a database the user points at with `--database-url`.

The embedded cluster is tuned the way a dedicated database host would be (shared buffers, WAL
size, no checkpoint storms during the pre-fill) but keeps durability settings at their defaults
(`fsync`, `synchronous_commit` on): a 2xx on a write means its rows are on disk.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from service.db import storage_mode
from service.db.embedded import EmbeddedPostgres
from service.db.urls import asyncpg_dsn

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
