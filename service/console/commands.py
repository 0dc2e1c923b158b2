"""`/console/commands`: the fleet's commands filtered by status, age and action, the stuck ones
highlighted, a dispatch form (`POST /console/commands/dispatch`), and bulk dispatches: a form
(`POST /console/commands/bulk`, the API's `POST /v1/dispatches/bulk` with a tag, presence, app
version or id-prefix filter, or the whole fleet), the newest bulks, and each bulk's page
(`/console/commands/bulk/{id}`: its counts by command and push status, refreshed every 2 s while
its commands are being created, its first targets, and a cancel).

Stuck means what it means for `GET /v1/commands` and a device's push reachability: pending for
longer than `TELEMETRY_COMMAND_STUCK_SECONDS`. The list reads each command with its push as the
operators' API reads do (`SELECT_COMMAND_WITH_PUSH`, `command_with_push`); `GET /v1/commands`
filters by status and age only, so the action filter is this page's. A dispatch is the device
page's, with the API's checks.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Annotated, Any

from aiohttp import web
from msgspec import Meta

from service.api.audit import actor_named
from service.api.bulk import submit_bulk
from service.api.errors import not_found
from service.api.parameters import BulkIdPath, CommandStatus, OlderThan, Parameters, parse
from service.api.schemas import COMMAND_STATUSES, BulkDispatchRequest
from service.api.state import services
from service.api.validation import check_storable, convert
from service.audit.log import Actor
from service.bulk.dispatches import bulk_by_id, bulk_counts, bulk_page, cancel_bulk, recent_bulks
from service.commands.reads import SELECT_COMMAND_WITH_PUSH, command_with_push
from service.console.access import render
from service.console.devices import dispatch, form_text, payload_of
from service.console.sessions import ConsoleSession

SHOWN = 100
BULKS_SHOWN = 10
BULK_TARGETS_SHOWN = 50
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
        bulks = await recent_bulks(conn, BULKS_SHOWN)
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
        "bulks": bulks,
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


# The bulk form's filter fields: the device list's (and the API selector's) names.
_BULK_FILTERS = ("tag", "presence", "app_version", "q")


async def post_bulk(request: web.Request, session: ConsoleSession) -> web.StreamResponse:
    """The posted bulk, created with the API's checks; 303 to its page."""
    form = await request.post()
    if form_text(form, "all") == "on":
        selector: dict[str, Any] = {"all": True}
    else:
        selector = {"filter": {k: v for k in _BULK_FILTERS if (v := form_text(form, k))}}
    body = {
        # One form submission is one bulk: its idempotency key is made here.
        "request_id": f"console-{uuid.uuid4()}",
        "action": form_text(form, "action"),
        "payload": payload_of(form_text(form, "payload") or ""),
        "selector": selector,
    }
    check_storable(body)
    created = await submit_bulk(
        request, convert(body, BulkDispatchRequest), session.user_id, _actor(request, session)
    )
    return web.Response(status=303, headers={"Location": f"/console/commands/bulk/{created.bulk.id}"})


def _actor(request: web.Request, session: ConsoleSession) -> Actor:
    return actor_named(request, session.username)


async def _bulk_context(request: web.Request, bulk_id: int) -> dict[str, Any]:
    async with services(request).pool.acquire() as conn:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            bulk = await bulk_by_id(conn, bulk_id)
            if bulk is None:
                raise not_found(f"no bulk dispatch {bulk_id}", field="bulk_id")
            counts = await bulk_counts(conn, bulk_id)
            targets, more = await bulk_page(conn, bulk_id, None, BULK_TARGETS_SHOWN)
    return {"bulk": bulk, "counts": counts, "targets": targets, "more": more is not None, "cancelled": None}


async def get_bulk(request: web.Request, session: ConsoleSession) -> web.StreamResponse:
    params = parse(BulkIdPath, request.match_info, request.query)
    return render(request, "bulk.html", await _bulk_context(request, params.bulk_id))


async def post_bulk_cancel(request: web.Request, session: ConsoleSession) -> web.StreamResponse:
    params = parse(BulkIdPath, request.match_info, request.query)
    result = await cancel_bulk(services(request).pool, params.bulk_id, by=_actor(request, session))
    if result is None:
        raise not_found(f"no bulk dispatch {params.bulk_id}", field="bulk_id")
    context = await _bulk_context(request, params.bulk_id)
    context["cancelled"] = result.cancelled
    return render(request, "bulk.html", context)
