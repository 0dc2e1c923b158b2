"""The test PostgreSQL server and its per-test databases: which storage modes run
(`TEST_ENGINE`), whether TimescaleDB loads, a fresh database, settings and the migrator for it."""

from __future__ import annotations

import asyncio
import io
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from service.db.embedded import EmbeddedPostgres
from service.migrations.migrator import Migrator
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
    "events",
    "webhook_subscriptions",
    "webhook_deliveries",
    "device_presence",
    "device_push_tokens",
    "command_pushes",
    "bulk_dispatch_targets",
    "bulk_dispatches",
    "device_tags",
    "operator_audit",
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


def throwaway_cluster(directory: Path, **options: str) -> EmbeddedPostgres:
    """A test cluster in `directory`: durability off (nothing in it must survive a crash), plus
    `options` (server settings)."""
    return EmbeddedPostgres(
        directory, server_options={"fsync": "off", "synchronous_commit": "off", **options}
    )


async def probe_timescale(admin_url: str) -> tuple[bool, str]:
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


async def as_admin(pg_server: TestServer, *statements: str) -> None:
    """`statements` in order on the server's maintenance database (one connection, no
    transaction: CREATE DATABASE and TABLESPACE cannot run in one)."""
    conn = await asyncpg.connect(pg_server.admin_url)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


async def create_database(pg_server: TestServer) -> str:
    name = f"t_{uuid.uuid4().hex[:12]}"
    await as_admin(pg_server, f'CREATE DATABASE "{name}"')
    return pg_server.url_for(name)


def settings_for(url: str, mode: StorageMode, **overrides: object) -> Settings:
    return Settings(database_url=url, storage_mode=mode, **overrides)  # type: ignore[arg-type]


def migrator_for(url: str, mode: StorageMode, settings: Settings | None = None) -> Migrator:
    return Migrator(
        settings=settings or settings_for(url, mode), database_url=url, mode=mode, stdout=io.StringIO()
    )


async def migrate(
    url: str, mode: StorageMode, revision: str = "head", settings: Settings | None = None
) -> None:
    await asyncio.to_thread(migrator_for(url, mode, settings).upgrade, revision)
