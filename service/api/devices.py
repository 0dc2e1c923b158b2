"""`GET /v1/devices/{device_id}`, `POST …/revoke` and `POST …/reinstate` (operator).

Revoking is a ban: the credential stops working (in this instance at once, in others within
their auth cache TTL) and the device id cannot enroll again, with any token, until an operator
reinstates it. Reinstating lifts the ban only: the old credential stays revoked, and the device
comes back by enrolling with a token bound to its id, which issues a new credential.
"""

from __future__ import annotations

from datetime import timedelta

import asyncpg
import msgspec
from aiohttp import web

from service.api.audit import actor
from service.api.auth import require_operator
from service.api.errors import not_found
from service.api.parameters import DeviceIdPath, DevicePage
from service.api.responses import json_response
from service.api.schemas import DeviceState, DeviceSummary
from service.api.state import services
from service.commands.reachability import PushReachability, push_reachability
from service.fleet import revocation
from service.fleet.devices import device_row


def summary_of(row: asyncpg.Record) -> DeviceSummary:
    """A device's summary from a `service.fleet.devices.SUMMARY_COLUMNS` row (all but `push`)."""
    return DeviceSummary(**{name: row[name] for name in _SUMMARY_FIELDS})


_SUMMARY_FIELDS = tuple(name for name in DeviceSummary.__struct_fields__ if name != "push")


async def ensure_device_exists(conn: asyncpg.Connection, device_id: str) -> None:
    if not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM devices WHERE id = $1)", device_id):
        raise not_found(f"no device {device_id!r}", field="device_id")


async def newest_rows(pool: asyncpg.Pool, sql: str, page: DevicePage) -> list[asyncpg.Record]:
    """A device's newest rows (`sql` takes the device id as $1 and the limit as $2); 404 naming
    `device_id` when it is no device. Such rows exist only for enrolled devices, so the device
    is looked up only when there are none: one round trip when there are."""
    async with pool.acquire() as conn:
        rows = await conn.fetch(sql, page.device_id, page.limit)
        if not rows:
            await ensure_device_exists(conn, page.device_id)
    return rows


async def device_with_push(
    conn: asyncpg.Connection, device_id: str, stuck_after: timedelta, *, push_configured: bool = False
) -> tuple[asyncpg.Record, PushReachability]:
    """A device's summary row and its push reachability (the API's and the console's); 404
    naming `device_id` when it is no device. `push_configured`: this service has FCM
    credentials (else reachability says `not_configured`)."""
    now = await conn.fetchval("SELECT now()")
    row = await device_row(conn, device_id, now)
    if row is None:
        raise not_found(f"no device {device_id!r}", field="device_id")
    return row, await push_reachability(conn, device_id, stuck_after, push_configured=push_configured)


async def get_device(request: web.Request, params: DeviceIdPath) -> web.Response:
    await require_operator(request)
    svc = services(request)
    async with svc.pool.acquire() as conn:
        row, push = await device_with_push(
            conn,
            params.device_id,
            svc.settings.command_stuck,
            push_configured=svc.settings.fcm_credentials_file is not None,
        )
    return json_response(msgspec.structs.replace(summary_of(row), push=push))


async def revoke_device(request: web.Request, params: DeviceIdPath) -> web.Response:
    operator = await require_operator(request)
    svc = services(request)
    device_id = params.device_id
    state = await revocation.revoke(svc.pool, device_id, actor(request, operator))
    if state is None:
        raise not_found(f"no device {device_id!r}", field="device_id")
    svc.auth.forget_device(device_id)
    return json_response(DeviceState(device_id=device_id, credential_revoked=True, banned=True))


async def reinstate_device(request: web.Request, params: DeviceIdPath) -> web.Response:
    operator = await require_operator(request)
    device_id = params.device_id
    state = await revocation.reinstate(services(request).pool, device_id, actor(request, operator))
    if state is None:
        raise not_found(f"no device {device_id!r}", field="device_id")
    return json_response(
        DeviceState(device_id=device_id, credential_revoked=state.credential_revoked, banned=False)
    )
