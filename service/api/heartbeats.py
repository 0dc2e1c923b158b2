"""`POST /v1/heartbeats` (device) and `GET /v1/devices/{device_id}/heartbeats` (operator)."""

from __future__ import annotations

from datetime import UTC, datetime

from aiohttp import web

from service.api import request_id
from service.api.auth import require_device, require_operator
from service.api.devices import ensure_device_exists
from service.api.responses import json_response
from service.api.schemas import HeartbeatList, HeartbeatResult, HeartbeatsResponse, StoredHeartbeat
from service.api.state import services
from service.api.validation import check_timestamp, heartbeats_of, query_limit
from service.ingest.rows import HeartbeatRow, bucket_start


async def post_heartbeats(request: web.Request) -> web.Response:
    svc = services(request)
    svc.writer.ensure_capacity()  # before authentication and the body: refusing must be cheap
    device = await require_device(request)
    settings = svc.settings
    heartbeats, is_batch = await heartbeats_of(request, settings.max_batch_heartbeats)
    now = datetime.now(UTC)
    rows: list[HeartbeatRow] = []
    for i, hb in enumerate(heartbeats):
        prefix = f"heartbeats[{i}]." if is_batch else ""
        ts = check_timestamp(
            hb.ts,
            prefix + "ts",
            now=now,
            window=settings.retention.device_heartbeats,
            skew=settings.max_clock_skew,
        )
        rows.append(
            HeartbeatRow(
                device.device_id, ts, hb.status, hb.battery_pct, hb.app_version, hb.network, hb.extra
            )
        )
    stored = await svc.writer.submit_heartbeats(rows, request_id=request_id.of(request))
    bucket = settings.heartbeat_bucket_seconds
    results = [
        HeartbeatResult(ts=row.ts, bucket_start=bucket_start(row.ts, bucket), stored=ok)
        for row, ok in zip(rows, stored, strict=True)
    ]
    return json_response(HeartbeatsResponse(device_id=device.device_id, results=results))


async def list_heartbeats(request: web.Request) -> web.Response:
    await require_operator(request)
    svc = services(request)
    device_id = request.match_info["device_id"]
    limit = query_limit(request)
    async with svc.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT ts, bucket_start, received_at, status, battery_pct, app_version, network, extra"
            " FROM device_heartbeats WHERE device_id = $1 ORDER BY ts DESC LIMIT $2",
            device_id,
            limit,
        )
        if not rows:  # rows are only ever written for an enrolled device: one round trip if any
            await ensure_device_exists(conn, device_id)
    return json_response(
        HeartbeatList(device_id=device_id, heartbeats=[StoredHeartbeat(**dict(r)) for r in rows])
    )
