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
        conn = await asyncpg.connect(self.cluster.admin_url())
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        return self.cluster.admin_url(name)

    async def drop_database(self, name: str) -> None:
        conn = await asyncpg.connect(self.cluster.admin_url())
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.cluster.stop()
        if not self.keep:
            shutil.rmtree(self.data_dir, ignore_errors=True)


async def server_versions(url: str) -> dict[str, str | None]:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        pg = await conn.fetchval("SHOW server_version")
        ts = await conn.fetchval(
            "SELECT coalesce((SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'),"
            " (SELECT default_version FROM pg_available_extensions WHERE name = 'timescaledb'))"
        )
        settings = {
            name: await conn.fetchval(f"SHOW {name}")
            for name in ("shared_buffers", "synchronous_commit", "fsync", "max_connections")
        }
    finally:
        await conn.close()
    return {"postgresql": pg, "timescaledb": ts, **settings}


async def storage_mode_of(url: str) -> str:
    """The mode the migrated database is in, as the service decides it."""
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        return await storage_mode.detect(conn, "auto")
    finally:
        await conn.close()
