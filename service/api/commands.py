"""Commands followed to the end: the device acks and pulls its own, operators read them.

* `POST /v1/dispatches/{request_id}/ack` (device): goes through the group-commit writer
  (`ingest.statements.MERGE_ACKS`), so acks are batched like heartbeats. Only the addressed
  device can ack: for any other caller the command does not exist (404, never 403, so request
  ids are not confirmed to strangers). 200 with the current state when the ack moved the command
  forward or repeated its status; 409 with the current state when it would move it backward, to
  another terminal status, or out of `expired`.
* `GET /v1/device/commands?status=pending` (device): the caller's own undelivered commands,
  oldest first: "push to wake, pull to fetch" for devices whose push channel is dead.
* `GET /v1/commands/{request_id}`, `GET /v1/devices/{device_id}/commands`, `GET /v1/commands`
  (operator reads; the last one lists the fleet's commands stuck in a status, oldest first).
"""

from __future__ import annotations

from datetime import UTC, datetime

from aiohttp import web

from service.api import request_id
from service.api.auth import require_device, require_operator
from service.api.devices import ensure_device_exists
from service.api.errors import not_found
from service.api.responses import json_response
from service.api.schemas import (
    COMMAND_STATUSES,
    Command,
    CommandAck,
    CommandAckResponse,
    CommandConflict,
    CommandList,
    ErrorDetail,
)
from service.api.state import services
from service.api.validation import (
    check_timestamp,
    decode,
    query_choice,
    query_limit,
    query_seconds,
    query_timestamp,
)
from service.ingest.rows import COMMAND_COLUMNS, AckResult, AckRow, CommandRecord

SELECT_COMMAND = f"SELECT {', '.join(COMMAND_COLUMNS)} FROM commands"
# `older_than` beyond this names nothing a command table keeps (the default window is 90 days).
MAX_AGE_SECONDS = 10 * 365 * 86400


def command_body(record: CommandRecord) -> Command:
    return Command(**{name: getattr(record, name) for name in COMMAND_COLUMNS})


async def ack_command(request: web.Request) -> web.Response:
    svc = services(request)
    svc.writer.ensure_capacity()  # before authentication and the body: refusing must be cheap
    device = await require_device(request)
    body = await decode(request, CommandAck)
    ts = None
    if body.ts is not None:
        ts = check_timestamp(
            body.ts,
            "ts",
            now=datetime.now(UTC),
            window=svc.settings.retention.commands,
            skew=svc.settings.max_clock_skew,
        )
    row = AckRow(request.match_info["request_id"], device.device_id, body.status, ts, body.result, body.error)
    (outcome,) = await svc.writer.submit_acks([row], request_id=request_id.of(request))
    if outcome.result is AckResult.NOT_FOUND or outcome.command is None:
        raise not_found(f"no command {row.request_id!r} for this device", field="request_id")
    command = outcome.command
    if outcome.result is AckResult.CONFLICT:
        message = f"the command is {command.status!r}; an ack cannot move it to {row.status!r}"
        conflict = CommandConflict(
            error=ErrorDetail(
                code="status_conflict", message=message, field="status", request_id=request_id.of(request)
            ),
            command=command_body(command),
        )
        return json_response(conflict, status=409)
    changed = outcome.result is AckResult.CHANGED
    if changed and outcome.previous == "pending" and row.status == command.status:
        assert command.delivered_at is not None
        delay = (command.delivered_at - command.created_at).total_seconds()
        svc.metrics.command_delivery_seconds.observe(delay)
    return json_response(CommandAckResponse(changed=changed, command=command_body(command)))


async def pull_commands(request: web.Request) -> web.Response:
    svc = services(request)
    device = await require_device(request)
    query_choice(request, "status", ("pending",), "pending")
    limit = query_limit(request)
    rows = await svc.pool.fetch(
        f"{SELECT_COMMAND} WHERE device_id = $1 AND status = 'pending' ORDER BY created_at LIMIT $2",
        device.device_id,
        limit,
    )
    return json_response(
        CommandList(
            device_id=device.device_id, commands=[command_body(CommandRecord.from_row(r)) for r in rows]
        )
    )


async def get_command(request: web.Request) -> web.Response:
    await require_operator(request)
    rid = request.match_info["request_id"]
    row = await services(request).pool.fetchrow(f"{SELECT_COMMAND} WHERE request_id = $1", rid)
    if row is None:
        raise not_found(f"no command with request_id {rid!r}", field="request_id")
    return json_response(command_body(CommandRecord.from_row(row)))


async def list_device_commands(request: web.Request) -> web.Response:
    await require_operator(request)
    svc = services(request)
    device_id = request.match_info["device_id"]
    status = query_choice(request, "status", COMMAND_STATUSES, None)
    before = query_timestamp(request, "before")
    limit = query_limit(request)
    async with svc.pool.acquire() as conn:
        await ensure_device_exists(conn, device_id)
        rows = await conn.fetch(
            f"{SELECT_COMMAND} WHERE device_id = $1 AND ($2::text IS NULL OR status = $2)"
            " AND ($3::timestamptz IS NULL OR created_at < $3) ORDER BY created_at DESC LIMIT $4",
            device_id,
            status,
            before,
            limit,
        )
    return json_response(
        CommandList(device_id=device_id, commands=[command_body(CommandRecord.from_row(r)) for r in rows])
    )


async def list_commands(request: web.Request) -> web.Response:
    """The fleet's commands in `status` (default pending) for longer than `older_than` seconds
    (default TELEMETRY_COMMAND_STUCK_SECONDS), oldest first: where pushes do not arrive."""
    await require_operator(request)
    svc = services(request)
    status = query_choice(request, "status", ("pending", "delivered"), "pending")
    older_than = query_seconds(request, "older_than", svc.settings.command_stuck, MAX_AGE_SECONDS)
    limit = query_limit(request)
    rows = await svc.pool.fetch(
        f"{SELECT_COMMAND} WHERE status IN ('pending', 'delivered') AND status = $1"
        " AND created_at < now() - $2::interval ORDER BY created_at LIMIT $3",
        status,
        older_than,
        limit,
    )
    return json_response(CommandList(commands=[command_body(CommandRecord.from_row(r)) for r in rows]))
