"""`POST /v1/apk-downloads` (device): one APK download event of the calling device."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

from aiohttp import web

from service.api.auth import require_device
from service.api.responses import json_response
from service.api.schemas import ApkDownload, ApkDownloadResponse
from service.api.state import services
from service.api.validation import check_timestamp, decode


async def post_download(request: web.Request) -> web.Response:
    svc = services(request)
    # Shed load first: an overloaded or stalled instance answers 503 before touching the
    # database (authentication) or reading the body.
    svc.writer.ensure_capacity()
    device = await require_device(request)
    body = await decode(request, ApkDownload)
    ts = check_timestamp(
        body.ts,
        "ts",
        now=datetime.now(UTC),
        window=svc.settings.retention.apk_download_events,
        skew=svc.settings.max_clock_skew,
    )
    # The id is chosen here so that a flush retried after an unknown COMMIT outcome stores the
    # event once (ON CONFLICT on the primary key).
    event_id = secrets.randbits(63)
    await svc.writer.submit_downloads(
        [
            (
                event_id,
                ts,
                body.build_id,
                device.device_id,
                body.enrollment_token_id,
                body.outcome,
                body.bytes_downloaded,
            )
        ]
    )
    return json_response(ApkDownloadResponse(id=event_id, device_id=device.device_id, ts=ts), status=201)
