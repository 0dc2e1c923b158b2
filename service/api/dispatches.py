"""Push-command dispatches (operator): create once per `request_id`, look up, list per device."""

from __future__ import annotations

from datetime import UTC, datetime

from aiohttp import web

from service.api import request_id
from service.api.audit import actor
from service.api.auth import require_operator
from service.api.devices import ensure_device_exists, newest_rows
from service.api.errors import ApiError, not_found
from service.api.parameters import DevicePage, RequestIdPath
from service.api.responses import json_response
from service.api.schemas import Dispatch, DispatchList, DispatchRequest
from service.api.state import services
from service.api.validation import decode
from service.audit.log import Actor, AuditAction, record
from service.commands.dispatches import DispatchOutcome, DispatchRow, dispatch_by_request_id
from service.commands.lifecycle import CommandStatus
from service.push.worker import PushWorker

# This instance's push worker, when FCM is configured: a new dispatch wakes it, so its push
# leaves at once instead of at the worker's next poll.
PUSH_WORKER = web.AppKey("push_worker", PushWorker)


async def create_dispatch(request: web.Request) -> web.Response:
    """201 with the new dispatch; 200 with the stored one when `request_id` exists with the same
    device, action and payload; 409 when it exists with different ones."""
    svc = services(request)
    svc.writer.ensure_capacity()  # before authentication and the body: refusing must be cheap
    operator = await require_operator(request)
    body = await decode(request, DispatchRequest)
    outcome = await submit_dispatch(request, body, operator.user_id, actor(request, operator))
    return json_response(outcome.dispatch, status=201 if outcome.created else 200)


async def submit_dispatch(
    request: web.Request, body: DispatchRequest, user_id: int, by: Actor
) -> DispatchOutcome:
    """A checked dispatch, committed by the group-commit writer: the one path of the API's and
    the console's. 404 naming `device_id` for an unknown device; 409 naming `request_id` when
    it was used for a different dispatch. A new command wakes this instance's push worker; the
    audit row follows the writer's commit (the dispatch is committed in the writer's batch)."""
    svc = services(request)
    async with svc.pool.acquire() as conn:
        await ensure_device_exists(conn, body.device_id)
    row = DispatchRow(body.request_id, body.device_id, body.action, body.payload, datetime.now(UTC), user_id)
    outcomes: list[DispatchOutcome] = await svc.writer.submit([row], request_id=request_id.of(request))
    (outcome,) = outcomes
    stored = outcome.dispatch
    if (
        not outcome.created
        and stored.status != CommandStatus.EXPIRED
        and ((stored.device_id, stored.action, stored.payload) != (body.device_id, body.action, body.payload))
    ):
        raise ApiError(
            409,
            "request_id_conflict",
            "request_id was already used for a different dispatch (device, action or payload differ)",
            field="request_id",
        )
    if outcome.created and (pushes := request.app.get(PUSH_WORKER)) is not None:
        pushes.wake()
    details = {"device_id": body.device_id, "action": body.action, "created": outcome.created}
    async with svc.pool.acquire() as conn:
        await record(conn, by, AuditAction.DISPATCH_CREATE, f"command:{body.request_id}", details)
    return outcome


async def get_dispatch(request: web.Request, params: RequestIdPath) -> web.Response:
    await require_operator(request)
    request_id = params.request_id
    async with services(request).pool.acquire() as conn:
        record = await dispatch_by_request_id(conn, request_id)
    if record is None:
        raise not_found(f"no dispatch with request_id {request_id!r}", field="request_id")
    return json_response(record)


_NEWEST_DISPATCHES = (
    "SELECT id, request_id, device_id, action, payload, sent_at, status FROM fcm_dispatches"
    " WHERE device_id = $1 ORDER BY sent_at DESC LIMIT $2"
)


async def list_device_dispatches(request: web.Request, params: DevicePage) -> web.Response:
    await require_operator(request)
    rows = await newest_rows(services(request).pool, _NEWEST_DISPATCHES, params)
    dispatches = [Dispatch.from_row(r) for r in rows]
    return json_response(DispatchList(device_id=params.device_id, dispatches=dispatches))
