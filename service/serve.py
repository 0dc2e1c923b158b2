"""`telemetry serve`: database (given or embedded, resolved by `service.cli`) → migrations
under the advisory lock → app.

SIGTERM or SIGINT stops intake, answers in-flight requests, then lets the writer commit
everything queued (the app's cleanup) and closes the pool; `service.cli` then stops the
embedded cluster, if it runs one.

`--workers N` (N > 1): this process waits for the database and migrates once, then starts N
worker processes that share the port with `SO_REUSEPORT` (the kernel spreads connections over
them). Each worker has its own pool, writer and maintenance task (maintenance rounds take an
advisory lock, so one instance at a time does the work); the database enforces idempotency
across them as across separate instances. "listening on" is printed once every worker listens.
SIGTERM or SIGINT is passed to every worker, and each drains as a single process does; the
exit code is 0 only if every worker drained and exited 0. A worker that dies stops the others
(drained) and `serve` exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import multiprocessing
import signal
import socket
import sys
from collections.abc import Callable
from multiprocessing.connection import Connection, wait

from alembic.script import ScriptDirectory

from service import event_loop
from service.cli_errors import explain
from service.db import storage_mode
from service.db.preflight import check_database, wait_for_database
from service.migrations.migrator import Migrator
from service.settings import Settings

log = logging.getLogger(__name__)


def head_revisions(migrator: Migrator) -> frozenset[str]:
    script: ScriptDirectory = migrator.script()
    return frozenset(script.get_heads())


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    serve = subparsers.add_parser("serve", help="run the HTTP service")
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=None)
    serve.add_argument("--no-migrate", action="store_true", help="do not run migrations at start")
    serve.add_argument(
        "--workers", type=_positive, default=1, help="processes sharing the port (SO_REUSEPORT); default 1"
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    """`settings.database_url` is the resolved URL (`service.cli`)."""
    return event_loop.run(
        serve(settings, host=args.host, port=args.port, migrate=not args.no_migrate, workers=args.workers),
        settings.event_loop,
    )


async def serve(
    settings: Settings, *, host: str | None, port: int | None, migrate: bool, workers: int = 1
) -> int:
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
    if workers > 1:
        return await _serve_workers(settings, url, host=host, port=port, migrate=migrate, workers=workers)
    return await _serve(settings, url, host=host, port=port, migrate=migrate)


async def _migrate(settings: Settings, url: str) -> Migrator:
    migrator = Migrator(settings=settings, database_url=url, mode=settings.storage_mode)
    if settings.migrate_on_start:
        log.info("migrating to head")
        await asyncio.to_thread(migrator.upgrade, "head")
    return migrator


async def _serve(
    settings: Settings,
    url: str,
    *,
    host: str,
    port: int,
    migrate: bool,
    reuse_port: bool = False,
    listening: Callable[[str], None] | None = None,
) -> int:
    # Imported here: the whole HTTP layer, which the CLI's other groups do not need to load.
    from aiohttp import web

    from service.api.connections import ServiceRunner, raise_open_file_limit
    from service.api.state import SERVICES
    from service.app import create_app, create_pool

    if migrate:
        migrator = await _migrate(settings, url)
    else:
        migrator = Migrator(settings=settings, database_url=url, mode=settings.storage_mode)
    pool = await create_pool(url, settings)
    try:
        mode = await storage_mode.detect(pool, settings.storage_mode)
        app = create_app(settings, pool, storage_mode=mode, head_revisions=head_revisions(migrator))
        soft, _ = raise_open_file_limit()
        log.info("open-file limit: %d", soft)
        runner = ServiceRunner(
            app,
            settings,
            app[SERVICES].metrics,
            access_log=None,
            shutdown_timeout=30,
            read_bufsize=settings.read_buffer_bytes,
        )
        await runner.setup()
        site = web.TCPSite(runner, host, port, reuse_port=reuse_port or None)
        await site.start()
        bound = runner.addresses[0][1] if runner.addresses else port
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        log.info("storage mode: %s", mode)
        (listening or _announce)(f"telemetry listening on http://{host}:{bound}")
        await stop.wait()
        log.info("shutting down: refusing new writes, draining the write queue")
        await runner.cleanup()
        log.info("drained; closing database pool")
    finally:
        await pool.close()
    log.info("stopped")
    return 0


def _announce(line: str) -> None:
    print(line, flush=True)


def _reserve_port(host: str, port: int) -> socket.socket:
    """A bound, never listening `SO_REUSEPORT` socket: it fixes the port (a free one for 0)
    that every worker then binds, and takes no connections itself."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def _worker(settings: Settings, url: str, host: str, port: int, index: int, ready: Connection) -> None:
    """One worker process (started by `spawn`): serve until SIGTERM/SIGINT, then drain."""
    logging.basicConfig(
        level=settings.log_level.upper(),
        format=f"%(asctime)s %(levelname)s worker-{index} %(name)s %(message)s",
        stream=sys.stderr,
    )
    code = event_loop.run(
        _serve(settings, url, host=host, port=port, migrate=False, reuse_port=True, listening=ready.send),
        settings.event_loop,
    )
    raise SystemExit(code)


async def _serve_workers(
    settings: Settings, url: str, *, host: str, port: int, migrate: bool, workers: int
) -> int:
    if migrate:
        await _migrate(settings, url)
    reserved = _reserve_port(host, port)
    bound = reserved.getsockname()[1]
    context = multiprocessing.get_context("spawn")
    procs: list[multiprocessing.process.BaseProcess] = []
    pipes: list[Connection] = []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        for index in range(workers):
            receive, send = context.Pipe(duplex=False)
            proc = context.Process(
                target=_worker,
                args=(settings, url, host, bound, index, send),
                name=f"telemetry-worker-{index}",
            )
            proc.start()
            send.close()
            procs.append(proc)
            pipes.append(receive)
        if not await _all_listening(procs, pipes, stop):
            log.error("a worker exited before listening; stopping the others")
            return await _stop_workers(procs, 1)
        print(f"telemetry listening on http://{host}:{bound} ({workers} workers)", flush=True)
        sentinels = [p.sentinel for p in procs]
        waiting = asyncio.ensure_future(asyncio.to_thread(wait, sentinels))
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({waiting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        died = waiting.done()
        if died:
            log.error("a worker exited unexpectedly; stopping the others")
        else:
            log.info("shutting down: every worker refuses new writes and drains its write queue")
        code = await _stop_workers(procs, 1 if died else 0)
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
        return code
    finally:
        reserved.close()
        for pipe in pipes:
            pipe.close()


async def _all_listening(
    procs: list[multiprocessing.process.BaseProcess], pipes: list[Connection], stop: asyncio.Event
) -> bool:
    """True once every worker said it listens; False if one exits first or we are stopped."""
    pending = dict(zip(pipes, procs, strict=True))
    while pending and not stop.is_set():
        objects: list[Connection | int] = [*pending, *(p.sentinel for p in pending.values())]
        ready = await asyncio.to_thread(wait, objects, 0.2)
        for obj in ready:
            if isinstance(obj, int) or obj not in pending:
                return False
            try:
                obj.recv()
            except EOFError:
                return False
            del pending[obj]
    return not pending


async def _stop_workers(procs: list[multiprocessing.process.BaseProcess], code: int) -> int:
    """SIGTERM every live worker and wait for each to drain; 0 only if all exit 0 and `code`
    is 0."""
    for proc in procs:
        if proc.is_alive() and proc.pid is not None:
            proc.terminate()
    for proc in procs:
        await asyncio.to_thread(proc.join)
    codes = [proc.exitcode for proc in procs]
    log.info("stopped %d workers (exit codes %s)", len(procs), codes)
    return code if all(c == 0 for c in codes) else 1
