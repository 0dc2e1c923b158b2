"""Commands followed to the end: the device acks and pulls its own, operators read them.

* `POST /v1/dispatches/{request_id}/ack` (device): goes through the group-commit writer
  (`commands.acks.MERGE_ACKS`), so acks are batched like heartbeats. Only the addressed
  device can ack: for any other caller the command does not exist (404, never 403, so request
  ids are not confirmed to strangers). 200 with the current state when the ack moved the command
  forward or repeated its status; 409 with the current state when it would move it backward, to
  another terminal status, or out of `expired`.
* `POST /v1/commands/{request_id}/cancel` (admin): an open command becomes `cancelled`
  (`commands.cancel`: the acks' own statement, in this request's transaction). 200 with the
  state (`changed: false` when it was cancelled already), 409 with the state when it had ended
  otherwise, 404 when there is no such command.
* `GET /v1/device/commands?status=pending` (device): the caller's own undelivered commands,
  oldest first: "push to wake, pull to fetch" for devices whose push channel is dead.
* `GET /v1/commands/{request_id}`, `GET /v1/devices/{device_id}/commands`, `GET /v1/commands`
  (operator reads; the last one lists the fleet's commands stuck in a status, oldest first).
"""

from __future__ import annotations

from datetime import timedelta

from aiohttp import web

from service.api import request_id
from service.api.audit import actor
from service.api.auth import require_device, require_operator
from service.api.devices import ensure_device_exists
from service.api.errors import not_found, status_conflict
from service.api.parameters import (
    DeviceCommandsQuery,
    PendingCommandsQuery,
    RequestIdPath,
    StuckCommandsQuery,
)
from service.api.responses import json_response
from service.api.schemas import (
    Command,
    CommandAck,
    CommandAckResponse,
    CommandConflict,
    CommandList,
)
from service.api.state import services
from service.api.validation import check_received, decode
from service.audit.log import AuditAction, record
from service.commands.acks import AckOutcome, AckResult, AckRow
from service.commands.cancel import cancel_command
from service.commands.lifecycle import OPEN, SELECT_COMMAND, CommandStatus
from service.commands.reads import SELECT_COMMAND_WITH_PUSH, command_with_push
from service.retention.audit import COMMANDS


async def ack_command(request: web.Request, params: RequestIdPath) -> web.Response:
    svc = services(request)
    svc.writer.ensure_capacity()  # before authentication and the body: refusing must be cheap
    device = await require_device(request)
    body = await decode(request, CommandAck)
    ts = None
    if body.ts is not None:
        ts = check_received(request, body.ts, "ts", COMMANDS.name)
    row = AckRow(params.request_id, device.device_id, body.status, ts, body.result, body.error)
    outcomes: list[AckOutcome] = await svc.writer.submit([row], request_id=request_id.of(request))
    (outcome,) = outcomes
    if outcome.result is AckResult.NOT_FOUND or outcome.command is None:
        raise not_found(f"no command {row.request_id!r} for this device", field="request_id")
    command = outcome.command
    if outcome.result is AckResult.CONFLICT:
        message = f"the command is {command.status!r}; an ack cannot move it to {row.status!r}"
        return json_response(
            CommandConflict(error=status_conflict(request, message, "status"), command=command), status=409
        )
    changed = outcome.result is AckResult.CHANGED
    if changed and outcome.previous == CommandStatus.PENDING and row.status == command.status:
        assert command.delivered_at is not None
        delay = (command.delivered_at - command.created_at).total_seconds()
        svc.metrics.command_delivery_seconds.observe(delay)
    return json_response(CommandAckResponse(changed=changed, command=command))


async def cancel(request: web.Request, params: RequestIdPath) -> web.Response:
    operator = await require_operator(request)
    rid = params.request_id
    async with services(request).pool.acquire() as conn, conn.transaction():
        outcome = await cancel_command(conn, rid, by=operator.username)
        if outcome.result in (AckResult.CHANGED, AckResult.UNCHANGED):
            details = {"changed": outcome.result is AckResult.CHANGED, "previous": outcome.previous}
            await record(
                conn, actor(request, operator), AuditAction.COMMAND_CANCEL, f"command:{rid}", details
            )
        # An operator's answer carries the push, as every operator read of a command does.
        row = await conn.fetchrow(f"{SELECT_COMMAND_WITH_PUSH} WHERE request_id = $1", rid)
    if outcome.result is AckResult.NOT_FOUND or outcome.command is None or row is None:
        raise not_found(f"no command with request_id {rid!r}", field="request_id")
    command = command_with_push(row)
    if outcome.result is AckResult.CONFLICT:
        message = f"the command is {command.status!r}; only an open one can be cancelled"
        conflict = CommandConflict(error=status_conflict(request, message, "request_id"), command=command)
        return json_response(conflict, status=409)
    return json_response(CommandAckResponse(changed=outcome.result is AckResult.CHANGED, command=command))


async def pull_commands(request: web.Request, params: PendingCommandsQuery) -> web.Response:
    svc = services(request)
    device = await require_device(request)
    rows = await svc.pool.fetch(
        f"{SELECT_COMMAND} WHERE device_id = $1 AND status = '{CommandStatus.PENDING}'"
        " ORDER BY created_at LIMIT $2",
        device.device_id,
        params.limit,
    )
    return json_response(
        CommandList(device_id=device.device_id, commands=[Command.from_row(r) for r in rows])
    )


async def get_command(request: web.Request, params: RequestIdPath) -> web.Response:
    await require_operator(request)
    rid = params.request_id
    row = await services(request).pool.fetchrow(f"{SELECT_COMMAND_WITH_PUSH} WHERE request_id = $1", rid)
    if row is None:
        raise not_found(f"no command with request_id {rid!r}", field="request_id")
    return json_response(command_with_push(row))


async def list_device_commands(request: web.Request, params: DeviceCommandsQuery) -> web.Response:
    await require_operator(request)
    svc = services(request)
    device_id, status, before, limit = params.device_id, params.status, params.before, params.limit
    async with svc.pool.acquire() as conn:
        await ensure_device_exists(conn, device_id)
        rows = await conn.fetch(
            f"{SELECT_COMMAND_WITH_PUSH} WHERE device_id = $1 AND ($2::text IS NULL OR status = $2)"
            " AND ($3::timestamptz IS NULL OR created_at < $3) ORDER BY created_at DESC LIMIT $4",
            device_id,
            status,
            before,
            limit,
        )
    return json_response(CommandList(device_id=device_id, commands=[command_with_push(r) for r in rows]))


async def list_commands(request: web.Request, params: StuckCommandsQuery) -> web.Response:
    """The fleet's commands in `status` (default pending) for longer than `older_than` seconds
    (default TELEMETRY_COMMAND_STUCK_SECONDS), oldest first: where pushes do not arrive."""
    await require_operator(request)
    svc = services(request)
    status, limit = params.status, params.limit
    older_than = svc.settings.command_stuck
    if params.older_than is not None:
        older_than = timedelta(seconds=params.older_than)
    rows = await svc.pool.fetch(
        f"{SELECT_COMMAND_WITH_PUSH} WHERE {CommandStatus.sql_in('status', OPEN)} AND status = $1"
        " AND created_at < now() - $2::interval ORDER BY created_at LIMIT $3",
        status,
        older_than,
        limit,
    )
    return json_response(CommandList(commands=[command_with_push(r) for r in rows]))
