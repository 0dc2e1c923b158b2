"""`GET /v1/devices`, `GET /v1/fleet/summary`, `GET /v1/devices/{device_id}/events` and
`GET /v1/enrollment-events` (operator): the fleet view.

Every query value is checked before the database is asked: an unknown value, a number out of
range or a malformed cursor is 422 naming the parameter. Presence is judged at the database's
clock, once per answer (`service.fleet`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from aiohttp import web

from service.api.auth import require_operator
from service.api.devices import ensure_device_exists, summary_of
from service.api.errors import unprocessable
from service.api.responses import json_response
from service.api.schemas import (
    INT8_MAX,
    DeviceEvent,
    DeviceEventList,
    DeviceList,
    EnrollmentEvent,
    EnrollmentEventList,
)
from service.api.state import services
from service.api.validation import query_choice, query_int, query_text
from service.fleet.devices import CursorError, DeviceFilter, list_devices
from service.fleet.presence import PRESENCES

ENROLLMENT_OUTCOMES = ("enrolled", "refused", "already_enrolled", "banned")


def _limit(request: web.Request) -> int:
    limit = query_int(request, "limit", 1, 1000, default=100)
    assert limit is not None
    return limit


async def get_devices(request: web.Request) -> web.Response:
    await require_operator(request)
    f = DeviceFilter(
        presence=query_choice(request, "presence", PRESENCES),
        app_version=query_text(request, "app_version", 64),
        status=query_text(request, "status", 64),
        battery_below=query_int(request, "battery_below", 0, 101),
        id_prefix=query_text(request, "q", 128),
    )
    limit = _limit(request)
    cursor = query_text(request, "cursor", 256)
    async with services(request).pool.acquire() as conn:
        now: datetime = await conn.fetchval("SELECT now()")
        try:
            rows, next_cursor = await list_devices(conn, f, limit, cursor, now)
        except CursorError as exc:
            raise unprocessable(str(exc), field="cursor", code="invalid_cursor") from None
    return json_response(DeviceList(devices=[summary_of(r) for r in rows], next_cursor=next_cursor))


async def get_fleet_summary(request: web.Request) -> web.Response:
    await require_operator(request)
    svc = services(request)
    return json_response(await svc.fleet_summary.get(svc.pool, svc.settings.fleet_summary_max_age))


_DEVICE_EVENTS = """
SELECT id, device_id, event_type, created_at AS at, details FROM device_events
WHERE device_id = $1 {before}
ORDER BY created_at DESC, id DESC LIMIT $2
"""
# Older than the event `before` names, in the same (created_at, id) order.
_BEFORE = "AND (created_at, id) < (SELECT created_at, id FROM device_events WHERE id = ${n})"


async def get_device_events(request: web.Request) -> web.Response:
    """Newest first; `before` is the `id` of the last event of the previous page."""
    await require_operator(request)
    device_id = request.match_info["device_id"]
    limit = _limit(request)
    before = query_int(request, "before", 1, INT8_MAX)
    async with services(request).pool.acquire() as conn:
        await ensure_device_exists(conn, device_id)
        args: list[Any] = [device_id, limit + 1]
        clause = ""
        if before is not None:
            args.append(before)
            clause = _BEFORE.format(n=3)
        rows = await conn.fetch(_DEVICE_EVENTS.format(before=clause), *args)
    events = [DeviceEvent(**dict(r)) for r in rows[:limit]]
    next_before = events[-1].id if len(rows) > limit else None
    return json_response(DeviceEventList(device_id=device_id, events=events, next_before=next_before))


async def get_enrollment_events(request: web.Request) -> web.Response:
    """Who used a token and what was refused, newest first; `before` as for device events."""
    await require_operator(request)
    token_id = query_int(request, "token_id", 1, INT8_MAX)
    outcome = query_choice(request, "outcome", ENROLLMENT_OUTCOMES)
    limit = _limit(request)
    before = query_int(request, "before", 1, INT8_MAX)
    args: list[Any] = [limit + 1]
    where: list[str] = []
    for column, value in (("enrollment_token_id", token_id), ("outcome", outcome)):
        if value is not None:
            args.append(value)
            where.append(f"{column} = ${len(args)}")
    if before is not None:
        args.append(before)
        n = len(args)
        where.append(f"(created_at, id) < (SELECT created_at, id FROM enrollment_events WHERE id = ${n})")
    rows = await services(request).pool.fetch(
        "SELECT id, enrollment_token_id, device_id, outcome, remote_addr, attempts, created_at AS at"
        f" FROM enrollment_events WHERE {' AND '.join(where) or 'true'}"
        " ORDER BY created_at DESC, id DESC LIMIT $1",
        *args,
    )
    events = [EnrollmentEvent(**dict(r)) for r in rows[:limit]]
    next_before = events[-1].id if len(rows) > limit else None
    return json_response(EnrollmentEventList(events=events, next_before=next_before))
