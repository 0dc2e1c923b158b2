"""`GET /health` (liveness and readiness) and `GET /metrics` (Prometheus)."""

from __future__ import annotations

import asyncio

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.api.responses import json_response
from service.api.schemas import Health
from service.api.state import services


async def health(request: web.Request) -> web.Response:
    """200 when the process is up, the database answers and its schema is at head; else 503
    (still with `live: true`: the process itself is fine, so restarting it would not help).
    Ready but with retention problems (a failing job, rows past their window) is `"status":
    "degraded"` with the problems listed: still serving, but someone should look."""
    svc = services(request)
    database, schema = "ok", "unknown"
    versions: set[str] | None = None
    try:
        async with asyncio.timeout(2):
            versions = {r[0] for r in await svc.pool.fetch("SELECT version_num FROM alembic_version")}
        schema = "head" if versions == set(svc.head_revisions) else "behind"
    except Exception:
        database = "unreachable"
    ready = database == "ok" and schema == "head" and svc.writer.state.value == "running"
    retention = svc.maintenance.last_health if svc.maintenance is not None else None
    problems = list(retention.problems) if retention is not None else []
    body = Health(
        status=("degraded" if problems else "ok") if ready else "unavailable",
        problems=problems,
        live=True,
        ready=ready,
        database=database,
        schema=schema,
        storage_mode=svc.storage_mode,
        revisions=sorted(versions) if versions is not None else None,
    )
    return json_response(body, status=200 if ready else 503)


async def live(request: web.Request) -> web.Response:
    return json_response({"live": True})


async def metrics(request: web.Request) -> web.Response:
    svc = services(request)
    svc.metrics.queue_rows.set(svc.writer.queued_rows)
    return web.Response(
        body=generate_latest(svc.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )
