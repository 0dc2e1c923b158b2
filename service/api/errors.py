"""Error responses: every error is `{"error": {"code", "message", "field"?, "request_id"}}` with a
4xx/5xx. Messages are written for the client: never an exception's text, SQL or class names."""

from __future__ import annotations

import re

import msgspec
from aiohttp import web

from service.api import request_id
from service.api.responses import json_response
from service.api.schemas import ErrorDetail


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        field: str | None = None,
        headers: dict[str, str] | None = None,
        close: bool = False,
    ) -> None:
        super().__init__(message)
        # Close the connection once answered, reading no more of it: the request is refused for
        # what it sends, so the rest of it must not be read (nor inflated) either.
        self.close = close
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = headers or {}

    def response(self, request_id: str | None = None) -> web.Response:
        body: dict[str, str] = {"code": self.code, "message": self.message}
        if self.field is not None:
            body["field"] = self.field
        if request_id is not None:
            body["request_id"] = request_id
        return json_response({"error": body}, self.status, self.headers)


def bad_request(message: str, field: str | None = None, code: str = "invalid") -> ApiError:
    return ApiError(400, code, message, field=field)


def unprocessable(message: str, field: str | None = None, code: str = "invalid_value") -> ApiError:
    return ApiError(422, code, message, field=field)


def unauthorized(message: str = "missing or invalid credentials") -> ApiError:
    return ApiError(401, "unauthorized", message, headers={"WWW-Authenticate": 'Bearer realm="telemetry"'})


def forbidden(message: str) -> ApiError:
    return ApiError(403, "forbidden", message)


def not_found(message: str, field: str | None = None) -> ApiError:
    return ApiError(404, "not_found", message, field=field)


def unavailable(message: str, retry_after: int, code: str = "unavailable") -> ApiError:
    return ApiError(503, code, message, headers={"Retry-After": str(retry_after)})


_PATH = re.compile(r" - at `\$(?P<path>[^`]*)`$")


def from_validation(exc: msgspec.ValidationError, prefix: str = "") -> ApiError:
    """msgspec's message ("Expected `int`, got `str` - at `$.a[0].b`") → 422 naming `a[0].b`."""
    text = str(exc)
    match = _PATH.search(text)
    field = None
    if match:
        field = (prefix + match.group("path")).lstrip(".")
        text = text[: match.start()]
    missing = re.match(r"Object missing required field `(?P<name>[^`]+)`", text)
    if missing:
        field = f"{field}.{missing['name']}" if field else missing["name"]
    unknown = re.match(r"Object contains unknown field `(?P<name>[^`]+)`", text)
    if unknown:
        field = f"{field}.{unknown['name']}" if field else unknown["name"]
    return unprocessable(text, field=field or None)


def status_conflict(request: web.Request, message: str, field: str) -> ErrorDetail:
    """The error of a 409 that answers with the resource's current state beside it (an ack, a
    cancel or an installation report that would move a state machine backward)."""
    rid = request_id.of(request)
    return ErrorDetail(code="status_conflict", message=message, field=field, request_id=rid)
