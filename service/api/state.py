"""What request handlers share: the collaborators wired by `service.app.create_app`."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import asyncpg
from aiohttp import web

from service.api.bodies import BodyBudget
from service.api.credentials import Authenticator
from service.api.throttle import FailureThrottle
from service.db.watchdog import DatabaseWatchdog
from service.events.hub import EventHub
from service.fleet.summary import SummarySnapshot
from service.ingest.writer import GroupCommitWriter
from service.metrics import Metrics
from service.retention.in_force import WindowsInForce
from service.retention.maintenance import Maintenance
from service.settings import Settings, StorageMode


@dataclass
class Services:
    settings: Settings
    pool: asyncpg.Pool
    writer: GroupCommitWriter
    metrics: Metrics
    auth: Authenticator
    enrollment_throttle: FailureThrottle
    storage_mode: StorageMode
    head_revisions: frozenset[str]
    watchdog: DatabaseWatchdog
    windows: WindowsInForce  # the retention windows timestamps are validated against
    # Wakes the live event streams (`GET /v1/events/stream`): one poll per instance.
    event_hub: EventHub
    maintenance: Maintenance | None = None
    fleet_summary: SummarySnapshot = field(default_factory=SummarySnapshot)
    # Bytes of request bodies being read and decoded at once (`service.api.bodies`).
    body_budget: BodyBudget = field(default_factory=lambda: BodyBudget(Settings().body_budget_bytes))
    # Body walks longer than one slice take turns (`service.api.validation`).
    long_walks: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(1))


SERVICES = web.AppKey("services", Services)


def services(request: web.Request) -> Services:
    return request.app[SERVICES]
