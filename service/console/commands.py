"""`/console/commands`: the fleet's commands filtered by status, age and action, the stuck ones
highlighted, and a dispatch form (`POST /console/commands/dispatch`).

Stuck means what it means for `GET /v1/commands` and a device's push reachability: pending for
longer than `TELEMETRY_COMMAND_STUCK_SECONDS`. The list reads each command with its push as the
operators' API reads do (`SELECT_COMMAND_WITH_PUSH`, `command_with_push`); `GET /v1/commands`
filters by status and age only, so the action filter is this page's. A dispatch is the device
page's, with the API's checks.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

from aiohttp import web
from msgspec import Meta

from service.api.parameters import CommandStatus, OlderThan, Parameters, parse
from service.api.schemas import COMMAND_STATUSES
from service.api.state import services
from service.commands.reads import SELECT_COMMAND_WITH_PUSH, command_with_push
from service.console.access import render
from service.console.devices import dispatch, form_text
from service.console.sessions import ConsoleSession

SHOWN = 100
Action = Annotated[str, Meta(min_length=1, max_length=64, description="The command's action equals")]


class CommandsQuery(Parameters):
    status: CommandStatus | None = None
    older_than: OlderThan | None = None
    action: Action | None = None


_LIST = f"""{SELECT_COMMAND_WITH_PUSH}
WHERE ($1::text IS NULL OR status = $1) AND ($2::interval IS NULL OR created_at < now() - $2::interval)
  AND ($3::text IS NULL OR command = $3)
ORDER BY created_at DESC LIMIT $4
"""


async def _context(request: web.Request, query: CommandsQuery) -> dict[str, Any]:
    svc = services(request)
    older = None if query.older_than is None else timedelta(seconds=query.older_than)
    async with svc.pool.acquire() as conn:
        rows = await conn.fetch(_LIST, query.status, older, query.action, SHOWN + 1)
        now = await conn.fetchval("SELECT now()")
    stuck_after = svc.settings.command_stuck
    commands = [command_with_push(r) for r in rows[:SHOWN]]
    stuck = {c.request_id for c in commands if c.status == "pending" and c.created_at < now - stuck_after}
    return {
        "commands": commands,
        "stuck": stuck,
        "stuck_after_seconds": int(stuck_after.total_seconds()),
        "more": len(rows) > SHOWN,
        "query": query,
        "statuses": COMMAND_STATUSES,
        "dispatched": None,
    }


async def get_commands(request: web.Request, session: ConsoleSession) -> web.StreamResponse:
    if any(not value for value in request.query.values()):
        # The filter form sends fields left empty: drop them (the parser refuses empty values).
        kept = {k: v for k, v in request.query.items() if v}
        return web.Response(status=303, headers={"Location": str(request.rel_url.with_query(kept))})
    query = parse(CommandsQuery, request.match_info, request.query)
    return render(request, "commands.html", await _context(request, query))


async def post_dispatch(request: web.Request, session: ConsoleSession) -> web.StreamResponse:
    form = await request.post()
    device_id = form_text(form, "device_id") or ""
    dispatched = await dispatch(request, session, device_id)
    context = await _context(request, CommandsQuery())
    context["dispatched"] = dispatched
    return render(request, "commands.html", context, status=201)
