"""The app factory: explicit wiring of settings, pool, writer, authentication and routes."""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta
from typing import Any, Protocol

import asyncpg
from aiohttp import web

from service.api.auth import guarded
from service.api.bodies import BodyBudget
from service.api.bulk import BULK_EXPANDER
from service.api.credentials import Authenticator
from service.api.dispatches import PUSH_WORKER
from service.api.middleware import MIDDLEWARES
from service.api.openapi_doc import OPENAPI, build_openapi
from service.api.routes import ENDPOINTS
from service.api.state import SERVICES, Services
from service.api.throttle import FailureThrottle
from service.api.webhooks import WEBHOOKS
from service.bulk.expander import BulkExpander
from service.commands import acks, dispatches
from service.console.routes import mount as mount_console
from service.db.urls import asyncpg_dsn
from service.db.watchdog import DatabaseWatchdog
from service.events.hub import EventHub
from service.fleet import presence
from service.ingest import heartbeats
from service.ingest.connection import prepare_connection
from service.ingest.writer import GroupCommitWriter, Merge
from service.metrics import Metrics
from service.push.fcm import configured_sender
from service.push.worker import PushWorker
from service.retention.in_force import WindowsInForce
from service.retention.maintenance import Maintenance
from service.rollout import downloads
from service.settings import PresencePolicy, Settings, StorageMode
from service.webhooks.worker import WebhookWorker

log = logging.getLogger(__name__)


def row_merges(
    bucket_seconds: int = 10,
    presence_policy: PresencePolicy | None = None,
    presence_clock: Callable[[], datetime] | None = None,
    push_ttl: timedelta | None = None,
) -> tuple[Merge[Any, Any], ...]:
    """Every kind of row the writer stores, in the order each transaction takes them (acks
    last: a dispatch and an ack of it in one flush find the command already inserted).
    Heartbeats update their devices' presence in the same transaction. `presence_clock` stands
    for the database's clock (tests). With `push_ttl` (FCM configured: the command TTL) a new
    command's push is queued by its dispatch's own statement."""
    policy = presence_policy or PresencePolicy()
    return (
        heartbeats.merge(bucket_seconds, then=(presence.updater(bucket_seconds, policy, presence_clock),)),
        dispatches.merge(push_ttl),
        downloads.MERGE,
        acks.MERGE,
    )


# The staging table of every kind of row: each connection of the pool has them all.
ROW_STAGES = tuple(merge.stage for merge in row_merges())


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
        # Every connection gets the staging table of every kind of row (`row_merges`).
        init=functools.partial(prepare_connection, stages=ROW_STAGES),
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
    # What the alert rules compare against (deploy/prometheus/alerts.yml): the queue's limit,
    # and the watchdog's verdict as of each scrape, which needs no request to be seen.
    metrics.queue_limit_rows.set(settings.queue_max_rows)
    metrics.database_stalled.set_function(lambda: 1.0 if watchdog.stalled else 0.0)
    writer = GroupCommitWriter(
        pool,
        metrics,
        row_merges(
            settings.heartbeat_bucket_seconds,
            settings.presence,
            push_ttl=settings.command_ttl if settings.fcm_credentials_file is not None else None,
        ),
        batch_window=settings.batch_window,
        batch_max_rows=settings.batch_max_rows,
        queue_max_rows=settings.queue_max_rows,
        retry_attempts=settings.flush_retry_attempts,
        ack_timeout=settings.ack_timeout.total_seconds(),
        watchdog=watchdog,
    )
    # Partitions ahead and expired ones dropped (postgres mode), audit rows expired and failed
    # TimescaleDB jobs run in the foreground (both modes), retention health assessed: one
    # instance at a time, under an advisory lock.
    maintenance = Maintenance(pool, settings, storage_mode, metrics)
    # Timestamps are validated against the retention windows in force, re-read every few seconds.
    windows = WindowsInForce(pool, settings.retention)
    event_hub = EventHub(pool)
    # Webhook fan-out, delivery and upkeep: every instance takes part, claiming through the database.
    webhooks = WebhookWorker(pool, settings, metrics)
    # FCM pushes: queued by the dispatches' statement, claimed and sent by every instance's
    # worker. Without credentials the service is pull only, and says so once.
    sender = configured_sender(settings)
    pushes = PushWorker(pool, settings, sender, metrics) if sender is not None else None
    if pushes is None:
        log.info("push: FCM not configured (TELEMETRY_FCM_CREDENTIALS_FILE unset): devices pull only")
    # Bulk dispatches' commands, created chunk by chunk by every instance (their pushes queued
    # with them, as a single dispatch's are).
    expander = BulkExpander(
        pool,
        push_ttl=settings.command_ttl if pushes is not None else None,
        on_created=pushes.wake if pushes is not None else None,
    )
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
        windows=windows,
        event_hub=event_hub,
        maintenance=maintenance,
        body_budget=BodyBudget(settings.body_budget_bytes),
    )
    app[WEBHOOKS] = webhooks
    if pushes is not None:
        app[PUSH_WORKER] = pushes
    app[BULK_EXPANDER] = expander
    app[OPENAPI] = build_openapi(ENDPOINTS)
    for endpoint in ENDPOINTS:
        app.router.add_route(endpoint.method, endpoint.path, guarded(endpoint.auth, endpoint.route_handler()))
    mount_console(app)  # /console/: the operator console, on the same services

    # Started with the app, in this order, and stopped in the reverse order once the app has
    # answered its in-flight requests: the writer last, after committing everything queued and
    # before whoever owns the pool closes it; pushes and webhooks first (their sends end or are
    # released).
    for component in (writer, windows, maintenance, webhooks, *([pushes] if pushes else []), expander):
        app.cleanup_ctx.append(_running(component))

    # Open event streams end at shutdown, before aiohttp waits for in-flight requests.
    async def _end_streams(_: web.Application) -> None:
        await event_hub.close()

    app.on_shutdown.append(_end_streams)
    return app
