"""`GET /v1/devices`, `GET /v1/fleet/summary`, `GET /v1/devices/{device_id}/events` and
`GET /v1/enrollment-events` (operator): the fleet view.

Every query value is checked before the database is asked (`service.api.parameters`): an
unknown value, a number out of range or a malformed cursor is 422 naming the parameter.
Presence is judged at the database's clock, once per answer (`service.fleet`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg
from aiohttp import web

from service.api.auth import require_operator
from service.api.devices import ensure_device_exists, summary_of
from service.api.errors import unprocessable
from service.api.parameters import (
    DeviceEventsQuery,
    DeviceListQuery,
    EnrollmentEventsQuery,
    FleetSummaryQuery,
)
from service.api.responses import json_response
from service.api.schemas import (
    BulkFilter,
    DeviceEvent,
    DeviceEventList,
    DeviceList,
    EnrollmentEvent,
    EnrollmentEventList,
)
from service.api.state import services
from service.events.catalogue import DEVICE_HISTORY_NAMES
from service.fleet.devices import CursorError, DeviceFilter, list_devices
from service.fleet.summary import fleet_summary


def device_filter(given: DeviceListQuery | BulkFilter) -> DeviceFilter:
    """The device list's filters as the query (`GET /v1/devices`) or a bulk selector spells them."""
    return DeviceFilter(
        presence=given.presence,
        app_version=given.app_version,
        status=given.status,
        battery_below=given.battery_below,
        id_prefix=given.q,
        tag=given.tag,
    )


async def device_page(
    conn: asyncpg.Connection, params: DeviceListQuery, limit: int
) -> tuple[list[asyncpg.Record], str | None]:
    """A page of the device list by its filters and cursor (the API's and the console's):
    `(rows, next_cursor)`; a cursor that does not decode is 422 naming `cursor`."""
    f = device_filter(params)
    now: datetime = await conn.fetchval("SELECT now()")
    try:
        return await list_devices(conn, f, limit, params.cursor, now)
    except CursorError as exc:
        raise unprocessable(str(exc), field="cursor", code="invalid_cursor") from None


async def get_devices(request: web.Request, params: DeviceListQuery) -> web.Response:
    await require_operator(request)
    async with services(request).pool.acquire() as conn:
        rows, next_cursor = await device_page(conn, params, params.limit)
    return json_response(DeviceList(devices=[summary_of(r) for r in rows], next_cursor=next_cursor))


async def get_fleet_summary(request: web.Request, params: FleetSummaryQuery) -> web.Response:
    """The whole fleet's counts from this instance's snapshot; with `tag`, the tagged devices'
    counted now (a tag's devices are found through its index, so the cost is theirs)."""
    await require_operator(request)
    svc = services(request)
    if params.tag is not None:
        async with svc.pool.acquire() as conn:
            return json_response(await fleet_summary(conn, tag=params.tag))
    return json_response(await svc.fleet_summary.get(svc.pool, svc.settings.fleet_summary_max_age))


# The device's lifecycle events from the event log, under the names this list always had
# (`DEVICE_HISTORY_NAMES`); the log's other types for the device are in `GET /v1/events`.
_DEVICE_EVENTS = """
SELECT id, device_id, type, occurred_at AS at, payload FROM events
WHERE device_id = $1 AND type = ANY($3::text[]) {before}
ORDER BY occurred_at DESC, id DESC LIMIT $2
"""
# Older than the event `before` names, in the same (occurred_at, id) order.
_BEFORE = "AND (occurred_at, id) < (SELECT occurred_at, id FROM events WHERE device_id = $1 AND id = ${n})"


async def device_event_page(
    conn: asyncpg.Connection, device_id: str, limit: int, before: int | None
) -> DeviceEventList:
    """A device's lifecycle events, newest first, older than the event `before` names (the API's
    and the console's); 404 naming `device_id` when it is no device."""
    await ensure_device_exists(conn, device_id)
    args: list[Any] = [device_id, limit + 1, list(DEVICE_HISTORY_NAMES)]
    clause = ""
    if before is not None:
        args.append(before)
        clause = _BEFORE.format(n=4)
    rows = await conn.fetch(_DEVICE_EVENTS.format(before=clause), *args)
    events = [
        DeviceEvent(
            id=r["id"],
            device_id=r["device_id"],
            event_type=DEVICE_HISTORY_NAMES[r["type"]],
            at=r["at"],
            details=r["payload"],
        )
        for r in rows[:limit]
    ]
    next_before = events[-1].id if len(rows) > limit else None
    return DeviceEventList(device_id=device_id, events=events, next_before=next_before)


async def get_device_events(request: web.Request, params: DeviceEventsQuery) -> web.Response:
    """Newest first; `before` is the `id` of the last event of the previous page."""
    await require_operator(request)
    async with services(request).pool.acquire() as conn:
        page = await device_event_page(conn, params.device_id, params.limit, params.before)
    return json_response(page)


async def enrollment_event_page(
    conn: asyncpg.Connection | asyncpg.Pool,
    token_id: int | None,
    outcome: str | None,
    limit: int,
    before: int | None,
) -> EnrollmentEventList:
    """Enrollments and refusals, newest first, older than the row `before` names (the API's and
    the console's)."""
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
    rows = await conn.fetch(
        "SELECT id, enrollment_token_id, device_id, outcome, remote_addr, attempts, created_at AS at"
        f" FROM enrollment_events WHERE {' AND '.join(where) or 'true'}"
        " ORDER BY created_at DESC, id DESC LIMIT $1",
        *args,
    )
    events = [EnrollmentEvent(**dict(r)) for r in rows[:limit]]
    next_before = events[-1].id if len(rows) > limit else None
    return EnrollmentEventList(events=events, next_before=next_before)


async def get_enrollment_events(request: web.Request, params: EnrollmentEventsQuery) -> web.Response:
    """Who used a token and what was refused, newest first; `before` as for device events."""
    await require_operator(request)
    page = await enrollment_event_page(
        services(request).pool, params.token_id, params.outcome, params.limit, params.before
    )
    return json_response(page)
