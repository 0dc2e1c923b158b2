"""`/console/`: the fleet overview, and `/console/overview/counts`, the part htmx refreshes.

Every number is the API's own: the counts are `GET /v1/fleet/summary`'s snapshot (the same
`SummarySnapshot`, so the page and the API agree and cost one computation per max age), the
stuck commands are `GET /v1/commands`' statement with its default age, and the retention badge
is the maintenance round's last assessment (`/health`'s). The devices-seen trend is
`GET /v1/fleet/history`'s daily buckets (`fleet_history`), the active rollouts the Rollouts
screen's funnels (`GET /v1/apk-versions/{build_id}/rollout`'s). The page refreshes its counts
when the event stream (`/console/events/stream`) brings an event, and polls besides.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import msgspec
from aiohttp import web

from service.api.commands import SELECT_COMMAND
from service.api.history import fleet_history
from service.api.schemas import FleetHistory
from service.api.state import services
from service.commands.lifecycle import Command
from service.console.access import render
from service.console.rollouts import rollout_funnels
from service.console.sessions import ConsoleSession
from service.fleet.summary import BATTERY_BUCKETS

REFRESH_SECONDS = 10
STUCK_SHOWN = 10
ROLLOUTS_CONSIDERED = 5
TREND_SPAN = timedelta(days=30)


async def _context(request: web.Request) -> dict[str, Any]:
    svc = services(request)
    # Independent reads, each on its own connection: the page waits for the slowest, not the sum.
    summary, rows, funnels = await asyncio.gather(
        svc.fleet_summary.get(svc.pool, svc.settings.fleet_summary_max_age),
        svc.pool.fetch(
            f"{SELECT_COMMAND} WHERE status = 'pending' AND created_at < now() - $1::interval"
            " ORDER BY created_at LIMIT $2",
            svc.settings.command_stuck,
            STUCK_SHOWN + 1,
        ),
        rollout_funnels(svc.pool, request, ROLLOUTS_CONSIDERED),
    )
    health = svc.maintenance.last_health if svc.maintenance is not None else None
    rollouts = [r for r in funnels if r.active]
    return {
        "summary": summary,
        "battery_buckets": BATTERY_BUCKETS,
        "stuck": [Command.from_row(r) for r in rows[:STUCK_SHOWN]],
        "more_stuck": len(rows) > STUCK_SHOWN,
        "stuck_after_seconds": int(svc.settings.command_stuck.total_seconds()),
        "health": health,
        "refresh_seconds": REFRESH_SECONDS,
        # An event-driven refresh waits for the next snapshot, or it would show the old one.
        "snapshot_max_age": svc.settings.fleet_summary_max_age.total_seconds(),
        "rollouts": rollouts,
    }


async def _trend(request: web.Request) -> FleetHistory:
    async with services(request).pool.acquire() as conn:
        now = await conn.fetchval("SELECT now()")
        return await fleet_history(conn, now - TREND_SPAN, now, "1d")


async def get_overview(request: web.Request, session: ConsoleSession) -> web.StreamResponse:
    context, trend = await asyncio.gather(_context(request), _trend(request))
    context["trend"] = trend
    context["trend_json"] = msgspec.json.encode(trend).decode()
    return render(request, "overview.html", context)


async def get_overview_counts(request: web.Request, session: ConsoleSession) -> web.StreamResponse:
    return render(request, "_overview_counts.html", await _context(request))
