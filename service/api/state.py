"""What request handlers share: the collaborators wired by `service.app.create_app`."""

from __future__ import annotations

from dataclasses import dataclass, field

import asyncpg
from aiohttp import web

from service.api.credentials import Authenticator
from service.api.throttle import FailureThrottle
from service.db.watchdog import DatabaseWatchdog
from service.fleet.summary import SummarySnapshot
from service.ingest.writer import GroupCommitWriter
from service.metrics import Metrics
from service.retention.maintenance import PartitionMaintenance
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
    maintenance: PartitionMaintenance | None = None
    fleet_summary: SummarySnapshot = field(default_factory=SummarySnapshot)


SERVICES = web.AppKey("services", Services)


def services(request: web.Request) -> Services:
    return request.app[SERVICES]
