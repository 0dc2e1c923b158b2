"""`POST /v1/heartbeats` (device) and `GET /v1/devices/{device_id}/heartbeats` (operator)."""

from __future__ import annotations

from datetime import UTC, datetime

from aiohttp import web

from service.api import request_id
from service.api.auth import require_device, require_operator
from service.api.devices import newest_rows
from service.api.errors import unprocessable
from service.api.parameters import DevicePage
from service.api.responses import json_response
from service.api.schemas import (
    Heartbeat,
    HeartbeatBatch,
    HeartbeatList,
    HeartbeatResult,
    HeartbeatsResponse,
    StoredHeartbeat,
)
from service.api.state import services
from service.api.validation import check_timestamp, convert, read_json
from service.db.buckets import bucket_start
from service.db.time_series import HEARTBEATS
from service.ingest.heartbeats import HeartbeatRow


async def _heartbeats_of(request: web.Request, max_batch: int) -> tuple[list[Heartbeat], bool]:
    """One heartbeat or `{"heartbeats": [...]}`; returns (heartbeats, was_batch)."""
    value = await read_json(request)
    if "heartbeats" in value:
        batch = convert(value, HeartbeatBatch)
        if len(batch.heartbeats) > max_batch:
            raise unprocessable(
                f"at most {max_batch} heartbeats per request", field="heartbeats", code="batch_too_large"
            )
        return batch.heartbeats, True
    return [convert(value, Heartbeat)], False


async def post_heartbeats(request: web.Request) -> web.Response:
    svc = services(request)
    svc.writer.ensure_capacity()  # before authentication and the body: refusing must be cheap
    device = await require_device(request)
    settings = svc.settings
    heartbeats, is_batch = await _heartbeats_of(request, settings.max_batch_heartbeats)
    window = svc.windows.window(HEARTBEATS.name)
    now = datetime.now(UTC)
    rows: list[HeartbeatRow] = []
    for i, hb in enumerate(heartbeats):
        prefix = f"heartbeats[{i}]." if is_batch else ""
        ts = check_timestamp(
            hb.ts,
            prefix + "ts",
            now=now,
            window=window,
            skew=settings.max_clock_skew,
        )
        rows.append(
            HeartbeatRow(
                device.device_id, ts, hb.status, hb.battery_pct, hb.app_version, hb.network, hb.extra
            )
        )
    stored: list[bool] = await svc.writer.submit(rows, request_id=request_id.of(request))
    bucket = settings.heartbeat_bucket_seconds
    results = [
        HeartbeatResult(ts=row.ts, bucket_start=bucket_start(row.ts, bucket), stored=ok)
        for row, ok in zip(rows, stored, strict=True)
    ]
    return json_response(HeartbeatsResponse(device_id=device.device_id, results=results))


_NEWEST_HEARTBEATS = (
    "SELECT ts, bucket_start, received_at, status, battery_pct, app_version, network, extra"
    " FROM device_heartbeats WHERE device_id = $1 ORDER BY ts DESC LIMIT $2"
)


async def list_heartbeats(request: web.Request, params: DevicePage) -> web.Response:
    await require_operator(request)
    rows = await newest_rows(services(request).pool, _NEWEST_HEARTBEATS, params)
    heartbeats = [StoredHeartbeat(**dict(r)) for r in rows]
    return json_response(HeartbeatList(device_id=params.device_id, heartbeats=heartbeats))
