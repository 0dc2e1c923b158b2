"""`PUT /v1/device/push-token` (device): the calling device reports its FCM registration token.

An endpoint of its own rather than a field of enrollment or heartbeats: FCM rotates tokens on
its own schedule (`FirebaseMessagingService.onNewToken`), so the app reports exactly when it
gets one, without waiting for its next heartbeat (a push to a stale token is lost until then),
and heartbeats, sent every minute by every device, do not carry 160 bytes that almost never
change. The device is the one its credential names: there is no device id in the path or
body, so no device can set another's token. The answer is 200 whether the token changed or not
(a retry is harmless); a token that is not plausibly an FCM registration token is a 422 naming
`token`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec
from aiohttp import web

from service.api.auth import require_device
from service.api.errors import unprocessable
from service.api.responses import json_response
from service.api.schemas import Struct
from service.api.state import services
from service.api.validation import decode
from service.push.tokens import (
    MAX_TOKEN_LENGTH,
    MIN_TOKEN_LENGTH,
    TOKEN_PATTERN,
    is_plausible_token,
    record_token,
)

RegistrationToken = Annotated[
    str,
    msgspec.Meta(
        min_length=MIN_TOKEN_LENGTH,
        max_length=MAX_TOKEN_LENGTH,
        pattern=TOKEN_PATTERN,
        description="The FCM registration token (FirebaseMessaging.getToken / onNewToken)",
    ),
]


class PushTokenReport(Struct):
    token: RegistrationToken


class PushTokenState(Struct):
    device_id: str
    changed: Annotated[bool, msgspec.Meta(description="The token is new or differs from the stored one")]
    changed_at: datetime
    reported_at: datetime
    invalid_at: Annotated[
        datetime | None,
        msgspec.Meta(description="Set while FCM reported this token unregistered (a new token clears it)"),
    ]


async def put_push_token(request: web.Request) -> web.Response:
    svc = services(request)
    device = await require_device(request)
    body = await decode(request, PushTokenReport)
    if not is_plausible_token(body.token):  # the schema's pattern, without `$`'s trailing newline
        raise unprocessable("token is not an FCM registration token", field="token")
    async with svc.pool.acquire() as conn:
        report = await record_token(conn, device.device_id, body.token)
    return json_response(
        PushTokenState(
            device_id=device.device_id,
            changed=report.changed,
            changed_at=report.changed_at,
            reported_at=report.reported_at,
            invalid_at=report.invalid_at,
        )
    )
