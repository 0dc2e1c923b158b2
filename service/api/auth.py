"""Who is calling: `Authorization: Bearer <token>` → an operator or a device, else 401/403.

Missing, unknown, expired or revoked credentials get 401; a valid credential of the wrong kind
(a device on an operator endpoint, or the reverse) gets 403.
"""

from __future__ import annotations

from aiohttp import web

from service.api.credentials import DEVICE_PREFIX, OPERATOR_PREFIX, DeviceIdentity, Operator, bearer_token
from service.api.errors import forbidden, unauthorized
from service.api.state import services


def _token(request: web.Request) -> str:
    token = bearer_token(request.headers.get("Authorization"))
    if token is None:
        raise unauthorized("missing bearer token")
    return token


async def require_operator(request: web.Request) -> Operator:
    token = _token(request)
    auth = services(request).auth
    operator = await auth.operator(token)
    if operator is not None:
        return operator
    if token.startswith(DEVICE_PREFIX) and await auth.device(token) is not None:
        raise forbidden("device credentials cannot be used on operator endpoints")
    raise unauthorized()


async def require_device(request: web.Request) -> DeviceIdentity:
    token = _token(request)
    auth = services(request).auth
    device = await auth.device(token)
    if device is not None:
        return device
    if token.startswith(OPERATOR_PREFIX) and await auth.operator(token) is not None:
        raise forbidden("operator credentials cannot be used on device endpoints")
    raise unauthorized()
