"""`telemetry serve`: database (given or embedded, resolved by `service.cli`) → migrations
under the advisory lock → app.

SIGTERM or SIGINT stops intake, answers in-flight requests, then lets the writer commit
everything queued (the app's cleanup) and closes the pool; `service.cli` then stops the
embedded cluster, if it runs one.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

from alembic.script import ScriptDirectory

from service.cli_errors import explain
from service.db import storage_mode
from service.db.preflight import check_database, wait_for_database
from service.migrations.commands import Migrator
from service.settings import Settings

log = logging.getLogger(__name__)


def head_revisions(migrator: Migrator) -> frozenset[str]:
    script: ScriptDirectory = migrator.script()
    return frozenset(script.get_heads())


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    serve = subparsers.add_parser("serve", help="run the HTTP service")
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=None)
    serve.add_argument("--no-migrate", action="store_true", help="do not run migrations at start")


def run(args: argparse.Namespace, settings: Settings) -> int:
    """`settings.database_url` is the resolved URL (`service.cli`)."""
    return asyncio.run(serve(settings, host=args.host, port=args.port, migrate=not args.no_migrate))


async def serve(settings: Settings, *, host: str | None, port: int | None, migrate: bool) -> int:
    """Serve `settings.database_url` until SIGTERM/SIGINT. The database is waited for
    (`TELEMETRY_DB_WAIT_SECONDS`) before anything else; `/health` reports ready only once it
    answers at the head revision."""
    host = host or settings.host
    port = settings.port if port is None else port
    url = settings.database_url
    if not url:
        raise ValueError("serve needs a resolved database URL (service.cli resolves it)")
    reason = lambda exc: explain(exc, url).message.split(";")[0]  # noqa: E731
    await wait_for_database(url, settings, log, describe=reason)
    await check_database(url, settings)
    return await _serve(settings, url, host=host, port=port, migrate=migrate)


async def _serve(settings: Settings, url: str, *, host: str, port: int, migrate: bool) -> int:
    # Imported here: the whole HTTP layer, which the CLI's other groups do not need to load.
    from aiohttp import web

    from service.app import create_app, create_pool

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
