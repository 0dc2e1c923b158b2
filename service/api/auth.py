"""Who is calling: `Authorization: Bearer <token>` → an operator or a device, else 401/403.

Missing, unknown, expired or revoked credentials get 401, byte-identical whatever the reason; a
valid credential of the wrong kind (a device on an operator endpoint, or the reverse) gets 403,
and so does a viewer on an endpoint that changes anything.

What an endpoint needs is its `auth` kind in the route table (`service.api.routes`): `viewer`
(admin and viewer operators: every read), `admin` (admin operators only: every write), `ci`
(admin and ci operators: registering builds, the only thing a `ci` operator can do), `device` or
`none`.
`guarded` stamps the kind on each request before the handler runs, and `require_operator`
enforces it, so the role rule lives in the table, not in the handlers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Literal

from aiohttp import web

from service.api.credentials import DEVICE_PREFIX, OPERATOR_PREFIX, DeviceIdentity, Operator, bearer_token
from service.api.errors import forbidden, unauthorized
from service.api.state import services

Auth = Literal["none", "device", "viewer", "admin", "ci"]

# The operator roles each operator kind of endpoint lets in: `ci` may only register builds.
ALLOWED_ROLES: dict[str, tuple[str, ...]] = {
    "viewer": ("admin", "viewer"),
    "admin": ("admin",),
    "ci": ("admin", "ci"),
}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_REQUIRED = web.RequestKey("required_auth", str)
_OPERATOR = web.RequestKey("operator", Operator)
_DEVICE = web.RequestKey("device", DeviceIdentity)


def is_authenticated(request: web.Request) -> bool:
    """Whether the handler has proved who is calling (`require_operator` / `require_device`):
    what a body read after that may cost differs from one read before (`service.api.bodies`)."""
    # Devices first: theirs is the hot path, and a key a request lacks costs a KeyError inside.
    return _DEVICE in request or _OPERATOR in request


def guarded(auth: Auth, handler: Handler) -> Handler:
    """`handler` as registered for an endpoint of kind `auth`. For operator endpoints, the
    handler must authenticate (`require_operator`): answering without doing so is a bug, and a
    500 rather than an open endpoint."""
    if auth not in ALLOWED_ROLES:
        return handler

    async def operator_endpoint(request: web.Request) -> web.StreamResponse:
        request[_REQUIRED] = auth
        response = await handler(request)
        if _OPERATOR not in request:
            raise RuntimeError(f"{handler.__name__} answered without authenticating its operator")
        return response

    operator_endpoint.__name__ = handler.__name__
    return operator_endpoint


def _token(request: web.Request) -> str:
    token = bearer_token(request.headers.get("Authorization"))
    if token is None:
        raise unauthorized("missing bearer token")
    return token


def authenticated_as(request: web.Request, operator: Operator) -> None:
    """Record `operator` as the request's caller, proved otherwise than by a bearer token (a
    console session): `require_operator` then answers it as it is. For read endpoints only:
    the role rule of the route table is not applied again."""
    request[_OPERATOR] = operator


async def require_operator(request: web.Request) -> Operator:
    """The calling operator, allowed by its role on this endpoint (admin when not stamped)."""
    if _OPERATOR in request:
        return request[_OPERATOR]
    token = _token(request)
    auth = services(request).auth
    operator = await auth.operator(token)
    if operator is None:
        if token.startswith(DEVICE_PREFIX) and await auth.device(token) is not None:
            raise forbidden("device credentials cannot be used on operator endpoints")
        raise unauthorized()
    required = request.get(_REQUIRED, "admin")
    if operator.role not in ALLOWED_ROLES[required]:
        if operator.role == "viewer":
            raise forbidden(f"operator role {operator.role!r} can only read; this needs role 'admin'")
        needed = " or ".join(repr(role) for role in ALLOWED_ROLES[required])
        raise forbidden(f"operator role {operator.role!r} cannot use this endpoint; it needs role {needed}")
    request[_OPERATOR] = operator
    return operator


async def require_device(request: web.Request) -> DeviceIdentity:
    token = _token(request)
    auth = services(request).auth
    device = await auth.device(token)
    if device is not None:
        request[_DEVICE] = device
        return device
    if token.startswith(OPERATOR_PREFIX) and await auth.operator(token) is not None:
        raise forbidden("operator credentials cannot be used on device endpoints")
    raise unauthorized()
