"""Push-command dispatches (operator): create once per `request_id`, look up, list per device."""

from __future__ import annotations

from datetime import UTC, datetime

from aiohttp import web

from service.api import request_id
from service.api.auth import require_operator
from service.api.devices import ensure_device_exists
from service.api.errors import ApiError, not_found
from service.api.responses import json_response
from service.api.schemas import Dispatch, DispatchList, DispatchRequest
from service.api.state import services
from service.api.validation import decode, query_limit
from service.ingest.rows import DispatchRecord, DispatchRow
from service.ingest.statements import dispatch_by_request_id


def _dispatch(record: DispatchRecord) -> Dispatch:
    return Dispatch(
        id=record.id,
        request_id=record.request_id,
        device_id=record.device_id,
        action=record.action,
        payload=record.payload,
        sent_at=record.sent_at,
        status=record.status,
    )


async def create_dispatch(request: web.Request) -> web.Response:
    """201 with the new dispatch; 200 with the stored one when `request_id` exists with the same
    device, action and payload; 409 when it exists with different ones."""
    svc = services(request)
    svc.writer.ensure_capacity()  # before authentication and the body: refusing must be cheap
    operator = await require_operator(request)
    body = await decode(request, DispatchRequest)
    async with svc.pool.acquire() as conn:
        await ensure_device_exists(conn, body.device_id)
    row = DispatchRow(
        body.request_id, body.device_id, body.action, body.payload, datetime.now(UTC), operator.user_id
    )
    (outcome,) = await svc.writer.submit_dispatches([row], request_id=request_id.of(request))
    stored = outcome.dispatch
    if (
        not outcome.created
        and stored.status != "expired"
        and ((stored.device_id, stored.action, stored.payload) != (body.device_id, body.action, body.payload))
    ):
        raise ApiError(
            409,
            "request_id_conflict",
            "request_id was already used for a different dispatch (device, action or payload differ)",
            field="request_id",
        )
    return json_response(_dispatch(stored), status=201 if outcome.created else 200)


async def get_dispatch(request: web.Request) -> web.Response:
    await require_operator(request)
    request_id = request.match_info["request_id"]
    async with services(request).pool.acquire() as conn:
        record = await dispatch_by_request_id(conn, request_id)
    if record is None:
        raise not_found(f"no dispatch with request_id {request_id!r}", field="request_id")
    return json_response(_dispatch(record))


async def list_device_dispatches(request: web.Request) -> web.Response:
    await require_operator(request)
    svc = services(request)
    device_id = request.match_info["device_id"]
    limit = query_limit(request)
    async with svc.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT id, request_id, device_id, action, payload, sent_at, status FROM fcm_dispatches"
            " WHERE device_id = $1 ORDER BY sent_at DESC LIMIT $2",
            device_id,
            limit,
        )
        if not rows:  # dispatches exist only for enrolled devices: one round trip if any
            await ensure_device_exists(conn, device_id)
    return json_response(
        DispatchList(device_id=device_id, dispatches=[_dispatch(DispatchRecord.from_row(r)) for r in rows])
    )
