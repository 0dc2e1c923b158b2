"""The app factory: explicit wiring of settings, pool, writer, authentication and routes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Protocol

import asyncpg
from aiohttp import web

from service.api.auth import guarded
from service.api.credentials import Authenticator
from service.api.middleware import MIDDLEWARES
from service.api.openapi_doc import OPENAPI, build_openapi
from service.api.routes import ENDPOINTS
from service.api.state import SERVICES, Services
from service.api.throttle import FailureThrottle
from service.db.urls import asyncpg_dsn
from service.db.watchdog import DatabaseWatchdog
from service.ingest.statements import prepare_connection
from service.ingest.writer import GroupCommitWriter
from service.metrics import Metrics
from service.retention.maintenance import PartitionMaintenance
from service.settings import Settings, StorageMode


async def keep_session(conn: asyncpg.Connection) -> None:
    """The pool's reset on release: nothing beyond what asyncpg always does (roll back an open
    transaction, forget listeners). Its default reset sends `pg_advisory_unlock_all(); CLOSE
    ALL; UNLISTEN *; RESET ALL` on every release: one more round trip per credential lookup
    and per flush (py-spy: 9% of the service's samples under single heartbeats), for session
    state this service never leaves behind: no `SET` outside `SET LOCAL`, no cursors or
    `LISTEN`, and the one session-level advisory lock (maintenance) is released by its holder,
    which closes the connection if it cannot."""


class Background(Protocol):
    """Work that runs beside the requests for the app's whole life."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def _running(component: Background) -> Callable[[web.Application], AsyncIterator[None]]:
    async def lifecycle(_: web.Application) -> AsyncIterator[None]:
        await component.start()
        yield
        await component.stop()

    return lifecycle


async def create_pool(database_url: str, settings: Settings) -> asyncpg.Pool:
    return await asyncpg.create_pool(
        asyncpg_dsn(database_url),
        min_size=2,
        max_size=settings.pool_size,
        init=prepare_connection,
        reset=keep_session,
        # A stalled server must not hold a flush forever: the writer retries, then fails it.
        command_timeout=10,
    )


def create_app(
    settings: Settings,
    pool: asyncpg.Pool,
    *,
    storage_mode: StorageMode,
    head_revisions: frozenset[str],
    metrics: Metrics | None = None,
) -> web.Application:
    """The aiohttp application. The writer starts with the app and, on shutdown, once in-flight
    requests are answered, refuses new writes and commits everything queued before the pool may
    be closed."""
    metrics = metrics or Metrics()
    # Flushes and credential lookups report how long the database keeps them waiting.
    watchdog = DatabaseWatchdog(stall_after=settings.stall_after.total_seconds())
    writer = GroupCommitWriter(
        pool,
        metrics,
        batch_window=settings.batch_window,
        batch_max_rows=settings.batch_max_rows,
        queue_max_rows=settings.queue_max_rows,
        bucket_seconds=settings.heartbeat_bucket_seconds,
        retry_attempts=settings.flush_retry_attempts,
        ack_timeout=settings.ack_timeout.total_seconds(),
        watchdog=watchdog,
        presence=settings.presence,
    )
    # Partitions ahead and expired ones dropped (postgres mode), audit rows expired and failed
    # TimescaleDB jobs run in the foreground (both modes), retention health assessed: one
    # instance at a time, under an advisory lock.
    maintenance = PartitionMaintenance(pool, settings, storage_mode, metrics)
    app = web.Application(middlewares=MIDDLEWARES, client_max_size=settings.max_body_bytes)
    app[SERVICES] = Services(
        settings=settings,
        pool=pool,
        writer=writer,
        metrics=metrics,
        auth=Authenticator(pool, watchdog=watchdog),
        enrollment_throttle=FailureThrottle(),
        storage_mode=storage_mode,
        head_revisions=head_revisions,
        watchdog=watchdog,
        maintenance=maintenance,
    )
    app[OPENAPI] = build_openapi(ENDPOINTS)
    for endpoint in ENDPOINTS:
        app.router.add_route(endpoint.method, endpoint.path, guarded(endpoint.auth, endpoint.handler))

    # Started with the app, in this order, and stopped in the reverse order once the app has
    # answered its in-flight requests: the writer last, after committing everything queued and
    # before whoever owns the pool closes it.
    for component in (writer, maintenance):
        app.cleanup_ctx.append(_running(component))
    return app
