"""`telemetry serve`: database (given or embedded) → migrations under the advisory lock → app.

SIGTERM or SIGINT stops intake, lets the writer commit everything queued, answers in-flight
requests, closes the pool and, for the embedded cluster, stops PostgreSQL.
"""

from __future__ import annotations

import asyncio
import logging
import signal

import asyncpg
from aiohttp import web
from alembic.script import ScriptDirectory

from service.app import create_app, create_pool
from service.db.embedded import resolve_database_url
from service.db.storage_mode import PROBE_SQL, Probe, decide
from service.migrations.commands import Migrator
from service.settings import Settings, StorageMode

log = logging.getLogger("telemetry.serve")


async def detect_mode(pool: asyncpg.Pool, settings: Settings) -> StorageMode:
    row = await pool.fetchrow(PROBE_SQL)
    return decide(Probe(**dict(row)), settings.storage_mode)


def head_revisions(migrator: Migrator) -> frozenset[str]:
    script: ScriptDirectory = migrator.script()
    return frozenset(script.get_heads())


async def serve(settings: Settings, *, host: str | None, port: int | None, migrate: bool) -> int:
    host = host or settings.host
    port = settings.port if port is None else port
    url, cluster = await asyncio.to_thread(resolve_database_url, settings.database_url, settings.data_dir)
    migrator = Migrator(settings=settings, database_url=url, mode=settings.storage_mode)
    if migrate and settings.migrate_on_start:
        log.info("migrating to head")
        await asyncio.to_thread(migrator.upgrade, "head")
    pool = await create_pool(url, settings)
    try:
        mode = await detect_mode(pool, settings)
        app = create_app(settings, pool, storage_mode=mode, head_revisions=head_revisions(migrator))
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=30)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = runner.addresses[0][1] if runner.addresses else port
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        log.info("storage mode: %s", mode)
        print(f"telemetry listening on http://{host}:{bound}", flush=True)
        await stop.wait()
        log.info("shutting down: refusing new writes, draining the write queue")
        await runner.cleanup()
        log.info("drained; closing database pool")
    finally:
        await pool.close()
        if cluster is not None:
            await asyncio.to_thread(cluster.stop)
    log.info("stopped")
    return 0
