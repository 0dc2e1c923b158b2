"""`/console/devices` (the list), `/console/devices/{device_id}` (one device) and its dispatch.

The list takes `GET /v1/devices`' parameters, checked by the same validation (a bad value is a
422 page naming the parameter) and read by the same `list_devices`, keyset cursor included.
A device's page reads `GET /v1/devices/{id}`'s row and push reachability,
`GET /v1/devices/{id}/commands`' newest commands, `GET /v1/devices/{id}/events`' page
(`device_event_page`) and `GET /v1/devices/{id}/history`'s buckets (`device_history`, the
charts' points). A dispatch goes through the group-commit writer as `POST /v1/dispatches` does:
the page answers once it is committed. Revoke and reinstate are `service.fleet.revocation`'s,
as `POST /v1/devices/{id}/revoke` and `…/reinstate` are.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any, Literal

import msgspec
from aiohttp import web

from service.api.audit import actor_named
from service.api.devices import device_with_push
from service.api.dispatches import submit_dispatch
from service.api.errors import ApiError, not_found, unprocessable
from service.api.fleet import device_event_page, device_page
from service.api.history import BUCKETS, device_history
from service.api.parameters import Before, Bucket, DeviceListQuery, Parameters, PathId, parse
from service.api.schemas import DispatchRequest
from service.api.state import services
from service.api.validation import check_storable, convert
from service.commands.reads import SELECT_COMMAND_WITH_PUSH, command_with_push
from service.console.access import render
from service.console.sessions import ConsoleSession
from service.fleet import revocation
from service.fleet.presence import PRESENCES
from service.ingest.writer import WriteFailed

PAGE_SIZE = 50
COMMANDS_SHOWN = 20
PAYLOAD_MAX_CHARS = 16384
EVENTS_SHOWN = 20
# What the charts can span: a day to the hourly rollup's 90 days, each in 1 h or 1 d buckets.
SPANS: dict[str, timedelta] = {
    "24h": timedelta(hours=24),
    "7d": timedelta(days=7),
    "30d": timedelta(days=30),
    "90d": timedelta(days=90),
}
ChartSpan = Literal["24h", "7d", "30d", "90d"]


class DevicePageQuery(Parameters):
    """A device's page: the charts' span and bucket, and the event timeline's `before`."""

    device_id: PathId
    span: ChartSpan = "7d"
    bucket: Bucket = "1h"
    before: Before | None = None


async def get_devices(request: web.Request, session: ConsoleSession) -> web.StreamResponse:
    if any(not value for value in request.query.values()):
        # The filter form sends the fields left empty; the API's validation (rightly) refuses
        # empty values, so the page drops them and shows the URL of what it filters by.
        kept = {k: v for k, v in request.query.items() if v}
        location = request.rel_url.with_query(kept)
        return web.Response(status=303, headers={"Location": str(location)})
    # The API's own parser: the same rules and 422s naming the parameter (`limit` is the page's).
    params = parse(DeviceListQuery, request.match_info, request.query)
    cursor = params.cursor
    async with services(request).pool.acquire() as conn:
        rows, next_cursor = await device_page(conn, params, PAGE_SIZE)
    filters = {k: v for k, v in request.query.items() if k != "cursor" and v}
    return render(
        request,
        "devices.html",
        {
            "devices": rows,
            "filters": filters,
            "presences": PRESENCES,
            "next_query": {**filters, "cursor": next_cursor} if next_cursor else None,
            "first_page": cursor is None,
        },
    )


async def _device_context(
    request: web.Request, device_id: str, query: DevicePageQuery | None = None
) -> dict[str, Any]:
    svc = services(request)
    q = query or DevicePageQuery(device_id=device_id)
    async with svc.pool.acquire() as conn:
        fcm = svc.settings.fcm_credentials_file is not None
        row, push = await device_with_push(conn, device_id, svc.settings.command_stuck, push_configured=fcm)
        commands = await conn.fetch(
            f"{SELECT_COMMAND_WITH_PUSH} WHERE device_id = $1 ORDER BY created_at DESC LIMIT $2",
            device_id,
            COMMANDS_SHOWN,
        )
        events = await device_event_page(conn, device_id, EVENTS_SHOWN, q.before)
        now = await conn.fetchval("SELECT now()")
        history = await device_history(conn, device_id, now - SPANS[q.span], now, q.bucket)
    commands_shown = [command_with_push(r) for r in commands]
    return {
        "device": row,
        "push": push,
        "commands": commands_shown,
        "dispatched": None,
        "changed": None,
        "events": events,
        "history": history,
        # The charts' points as the history endpoint answers them, read by console.js.
        "history_json": msgspec.json.encode(history).decode(),
        "query": q,
        "spans": tuple(SPANS),
        "buckets": tuple(BUCKETS),
    }


async def get_device(request: web.Request, session: ConsoleSession) -> web.StreamResponse:
    query = parse(DevicePageQuery, request.match_info, request.query)
    return render(request, "device.html", await _device_context(request, query.device_id, query))


async def post_revoke(request: web.Request, session: ConsoleSession) -> web.StreamResponse:
    device_id = request.match_info["device_id"]
    svc = services(request)
    state = await revocation.revoke(svc.pool, device_id, actor_named(request, session.username))
    if state is None:
        raise not_found(f"no device {device_id!r}", field="device_id")
    svc.auth.forget_device(device_id)
    context = await _device_context(request, device_id)
    context["changed"] = "revoked" if state.changed else "already revoked"
    return render(request, "device.html", context)


async def post_reinstate(request: web.Request, session: ConsoleSession) -> web.StreamResponse:
    device_id = request.match_info["device_id"]
    by = actor_named(request, session.username)
    state = await revocation.reinstate(services(request).pool, device_id, by)
    if state is None:
        raise not_found(f"no device {device_id!r}", field="device_id")
    context = await _device_context(request, device_id)
    context["changed"] = "reinstated" if state.changed else "not banned"
    return render(request, "device.html", context)


def payload_of(text: str) -> dict[str, Any] | None:
    if not text.strip():
        return None
    if len(text) > PAYLOAD_MAX_CHARS:
        raise unprocessable(f"payload is at most {PAYLOAD_MAX_CHARS} characters", field="payload")
    try:
        value = msgspec.json.decode(text)
    except (msgspec.DecodeError, RecursionError):
        raise unprocessable("payload must be a JSON object", field="payload") from None
    if not isinstance(value, dict):
        raise unprocessable("payload must be a JSON object", field="payload")
    return value


def form_text(form: Any, name: str) -> str | None:
    value = form.get(name)
    return value if isinstance(value, str) else None


async def dispatch(request: web.Request, session: ConsoleSession, device_id: str) -> str:
    """The posted form's command to `device_id`, committed; its request id. Every check and
    error is `POST /v1/dispatches`'."""
    svc = services(request)
    form = await request.post()
    body = {
        # One console form submission is one command: its idempotency key is made here.
        "request_id": f"console-{uuid.uuid4()}",
        "device_id": device_id,
        "action": form_text(form, "action"),
        "payload": payload_of(form_text(form, "payload") or ""),
    }
    # The API's own checks, field names included: what the database cannot store (U+0000,
    # integers past int8, nesting), then the dispatch's types and bounds.
    check_storable(body)
    dispatch_request = convert(body, DispatchRequest)
    svc.writer.ensure_capacity()
    try:
        outcome = await submit_dispatch(
            request, dispatch_request, session.user_id, actor_named(request, session.username)
        )
    except WriteFailed as exc:  # the writer logged the cause under the request id
        status = 503 if exc.transient else 422
        raise ApiError(
            status, "dispatch_not_stored", "the dispatch was not stored; nothing was sent"
        ) from None
    return outcome.dispatch.request_id


async def post_dispatch(request: web.Request, session: ConsoleSession) -> web.StreamResponse:
    device_id = request.match_info["device_id"]
    dispatched = await dispatch(request, session, device_id)
    context = await _device_context(request, device_id)
    context["dispatched"] = dispatched
    return render(request, "device.html", context, status=201)
