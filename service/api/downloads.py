"""`POST /v1/apk-downloads` (device): one APK download event of the calling device.

The event's device and enrollment token come from the credential: `token_id` is the token the
device enrolled with. A body's `enrollment_token_id` is still accepted, for older clients, and
ignored."""

from __future__ import annotations

import hashlib
import secrets

from aiohttp import web

from service.api import request_id
from service.api.auth import require_device
from service.api.errors import unprocessable
from service.api.responses import json_response
from service.api.schemas import ApkDownload, ApkDownloadResponse
from service.api.state import services
from service.api.validation import check_received, decode
from service.db.time_series import DOWNLOADS
from service.rollout.downloads import DownloadRow


def event_id(device_id: str, event_key: str | None) -> int:
    """The event's id: derived from the device and its `event_key` when the client gave one
    (a retry maps to the same row), else random. Chosen here, not by a sequence, so that a
    flush retried after an unknown COMMIT outcome also stores the event once."""
    if event_key is None:
        return secrets.randbits(63)
    digest = hashlib.sha256(f"{device_id}\x1f{event_key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


async def post_download(request: web.Request) -> web.Response:
    svc = services(request)
    svc.writer.ensure_capacity()  # before authentication and the body: refusing must be cheap
    device = await require_device(request)
    body = await decode(request, ApkDownload)
    if body.event_key is not None and body.ts is None:
        raise unprocessable(
            "ts is required with event_key, so that a retry names the same event",
            field="ts",
            code="missing_ts",
        )
    ts = check_received(request, body.ts, "ts", DOWNLOADS.name)
    row_id = event_id(device.device_id, body.event_key)
    (stored,) = await svc.writer.submit(
        [
            DownloadRow(
                row_id,
                ts,
                body.build_id,
                device.device_id,
                # The device's own enrollment, never the body's claim (its field is ignored).
                device.enrollment_token_id,
                body.outcome,
                body.bytes_downloaded,
            )
        ],
        request_id=request_id.of(request),
    )
    response = ApkDownloadResponse(id=row_id, device_id=device.device_id, ts=ts, stored=stored)
    return json_response(response, status=201 if stored else 200)
