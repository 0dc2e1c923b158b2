"""`telemetry serve`: database (given or embedded) → migrations under the advisory lock → app.

SIGTERM or SIGINT stops intake, lets the writer commit everything queued, answers in-flight
requests, closes the pool and, for the embedded cluster, stops PostgreSQL.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import TYPE_CHECKING

from aiohttp import web
from alembic.script import ScriptDirectory

from service.app import create_app, create_pool
from service.cli_errors import explain
from service.db import storage_mode
from service.db.embedded import resolve_database_url
from service.db.preflight import check_database, wait_for_database
from service.migrations.commands import Migrator
from service.settings import Settings

if TYPE_CHECKING:
    from service.cli import Invocation

log = logging.getLogger(__name__)


def head_revisions(migrator: Migrator) -> frozenset[str]:
    script: ScriptDirectory = migrator.script()
    return frozenset(script.get_heads())


async def serve(
    settings: Settings,
    *,
    host: str | None,
    port: int | None,
    migrate: bool,
    invocation: Invocation | None = None,
) -> int:
    """Serve until SIGTERM/SIGINT. The database is waited for (`TELEMETRY_DB_WAIT_SECONDS`)
    before anything else; `/health` reports ready only once it answers at the head revision."""
    host = host or settings.host
    port = settings.port if port is None else port
    url, cluster = await asyncio.to_thread(resolve_database_url, settings.database_url, settings.data_dir)
    if invocation is not None:
        invocation.url = url
    try:
        reason = lambda exc: explain(exc, url).message.split(";")[0]  # noqa: E731
        await wait_for_database(url, settings, log, describe=reason)
        await check_database(url, settings)
        return await _serve(settings, url, host=host, port=port, migrate=migrate)
    finally:
        if cluster is not None:
            await asyncio.to_thread(cluster.stop)


async def _serve(settings: Settings, url: str, *, host: str, port: int, migrate: bool) -> int:
    migrator = Migrator(settings=settings, database_url=url, mode=settings.storage_mode)
    if migrate and settings.migrate_on_start:
        log.info("migrating to head")
        await asyncio.to_thread(migrator.upgrade, "head")
    pool = await create_pool(url, settings)
    try:
        mode = await storage_mode.detect(pool, settings.storage_mode)
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
    log.info("stopped")
    return 0
