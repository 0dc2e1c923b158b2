"""`GET /v1/devices/{device_id}`, `POST …/revoke` and `POST …/reinstate` (operator).

Revoking is a ban: the credential stops working (in this instance at once, in others within
their auth cache TTL) and the device id cannot enroll again, with any token, until an operator
reinstates it. Reinstating lifts the ban only: the old credential stays revoked, and the device
comes back by enrolling with a token bound to its id, which issues a new credential.
"""

from __future__ import annotations

import asyncpg
import msgspec
from aiohttp import web

from service.api.auth import require_operator
from service.api.errors import not_found
from service.api.responses import json_response
from service.api.schemas import DeviceState, DeviceSummary
from service.api.state import services
from service.commands.reachability import push_reachability
from service.fleet.devices import device_row


def summary_of(row: asyncpg.Record) -> DeviceSummary:
    """A device's summary from a `service.fleet.devices.SUMMARY_COLUMNS` row."""
    return DeviceSummary(
        device_id=row["device_id"],
        enrolled_at=row["enrolled_at"],
        credential_revoked=row["credential_revoked"],
        last_seen_at=row["last_seen_at"],
        last_status=row["last_status"],
        last_battery_pct=row["last_battery_pct"],
        banned=row["banned"],
        presence=row["presence"],
        offline_since=row["offline_since"],
        expected_interval_seconds=row["expected_interval_seconds"],
        last_app_version=row["last_app_version"],
        last_network=row["last_network"],
        last_ts=row["last_ts"],
        offline_after=row["offline_after"],
    )


async def ensure_device_exists(conn: asyncpg.Connection, device_id: str) -> None:
    if not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM devices WHERE id = $1)", device_id):
        raise not_found(f"no device {device_id!r}", field="device_id")


async def get_device(request: web.Request) -> web.Response:
    await require_operator(request)
    device_id = request.match_info["device_id"]
    svc = services(request)
    async with svc.pool.acquire() as conn:
        now = await conn.fetchval("SELECT now()")
        row = await device_row(conn, device_id, now)
        if row is None:
            raise not_found(f"no device {device_id!r}", field="device_id")
        push = await push_reachability(conn, device_id, svc.settings.command_stuck)
    return json_response(msgspec.structs.replace(summary_of(row), push=push))


async def revoke_device(request: web.Request) -> web.Response:
    operator = await require_operator(request)
    svc = services(request)
    device_id = request.match_info["device_id"]
    async with svc.pool.acquire() as conn, conn.transaction():
        revoked = await conn.fetchval(
            "UPDATE devices SET credential_revoked_at = coalesce(credential_revoked_at, now()),"
            " banned_at = coalesce(banned_at, now())"
            " WHERE id = $1 RETURNING id",
            device_id,
        )
        if revoked is None:
            raise not_found(f"no device {device_id!r}", field="device_id")
        await conn.execute(
            "INSERT INTO device_events (device_id, event_type, details)"
            " VALUES ($1, 'credential_revoked', $2)",
            device_id,
            {"by": operator.username},
        )
    svc.auth.forget_device(device_id)
    return json_response(DeviceState(device_id=device_id, credential_revoked=True, banned=True))


async def reinstate_device(request: web.Request) -> web.Response:
    operator = await require_operator(request)
    svc = services(request)
    device_id = request.match_info["device_id"]
    async with svc.pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            "UPDATE devices SET banned_at = NULL WHERE id = $1"
            " RETURNING credential_revoked_at IS NOT NULL AS revoked",
            device_id,
        )
        if row is None:
            raise not_found(f"no device {device_id!r}", field="device_id")
        await conn.execute(
            "INSERT INTO device_events (device_id, event_type, details) VALUES ($1, 'reinstated', $2)",
            device_id,
            {"by": operator.username},
        )
    return json_response(DeviceState(device_id=device_id, credential_revoked=row["revoked"], banned=False))
