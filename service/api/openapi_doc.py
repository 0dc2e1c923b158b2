"""`GET /openapi.json`: OpenAPI 3.1 built from the endpoint table and the msgspec schemas."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import msgspec
from aiohttp import web

from service.api import schemas
from service.api.endpoint import TEXT_PARAMETER, Endpoint
from service.api.responses import json_response

OPENAPI = web.AppKey("openapi", dict)


def schema_types(endpoints: Iterable[Endpoint]) -> tuple[type, ...]:
    """Every body type the endpoints take or answer with, each once, in table order."""
    types: dict[type, None] = {}
    for ep in endpoints:
        for t in (*ep.request_types, *ep.responses.values(), *_derived(ep).values()):
            if t is not None:
                types.setdefault(t, None)
    return tuple(types)


def _derived(ep: Endpoint) -> dict[int, type | None]:
    """The error statuses that follow from what the endpoint is, not from its handler."""
    derived: dict[int, type | None] = {}
    if ep.request is not None or ep.query:
        derived[400] = schemas.ErrorBody  # malformed body or query parameter
    if ep.auth != "none":
        derived[401] = derived[403] = schemas.ErrorBody  # no credential; wrong kind or role
    if ep.request is not None:
        derived[422] = schemas.ErrorBody  # a field out of bounds
    if ep.path.startswith("/v1/"):
        derived[503] = schemas.ErrorBody  # every /v1/ endpoint needs the database
    return derived


def _ref(t: type) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{t.__name__}"}


def build_openapi(endpoints: Sequence[Endpoint]) -> dict[str, Any]:
    """The OpenAPI 3.1 document of `endpoints`, as starlette's SchemaGenerator takes its routes."""
    _, components = msgspec.json.schema_components(
        schema_types(endpoints), ref_template="#/components/schemas/{name}"
    )
    paths: dict[str, dict[str, Any]] = {}
    for ep in endpoints:
        op: dict[str, Any] = {"summary": ep.summary, "operationId": ep.handler.__name__}
        params = [
            {"name": name, "in": "path", "required": True, "schema": ep.path_params.get(name, TEXT_PARAMETER)}
            for name in ep.path_names
        ]
        params += [
            {"name": q, "in": "query", "required": False, "schema": schema} for q, schema in ep.query.items()
        ]
        if params:
            op["parameters"] = params
        if ep.auth == "device":
            op["security"] = [{"device": []}]
        elif ep.auth != "none":
            op["security"] = [{"operator": []}]
            op["description"] = _ROLES[ep.auth]
        if ep.request is not None:
            types = ep.request_types
            schema = _ref(types[0]) if len(types) == 1 else {"oneOf": [_ref(t) for t in types]}
            op["requestBody"] = {"required": True, "content": {"application/json": {"schema": schema}}}
        responses: dict[str, Any] = {}
        declared = {**_derived(ep), **ep.responses}
        for status, body in sorted(declared.items()):
            entry: dict[str, Any] = {"description": _describe(status)}
            if body is not None:
                entry["content"] = {"application/json": {"schema": _ref(body)}}
            entry["headers"] = {"X-Request-ID": _REQUEST_ID}
            if body is schemas.ErrorBody and status in _ERROR_HEADERS:
                entry["headers"] |= _ERROR_HEADERS[status]
            responses[str(status)] = entry
        op["responses"] = responses
        paths.setdefault(ep.path, {})[ep.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Device telemetry API",
            "version": "1.0.0",
            "description": "Every response carries X-Request-ID; every error body is"
            ' {"error": {"code", "message", "field"?, "request_id"}}: quote the request_id when'
            " reporting a failure.",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "operator": {"type": "http", "scheme": "bearer", "description": "Operator API token (op_…)"},
                "device": {"type": "http", "scheme": "bearer", "description": "Device credential (dev_…)"},
            },
        },
    }


_ROLES = {
    "viewer": "Roles `admin` and `viewer` (a `ci` operator gets 403).",
    "admin": "Operators with role `admin` only (a `viewer` gets 403).",
    "ci": "Operators with role `admin` or `ci` (a `viewer` gets 403).",
}


_REQUEST_ID = {
    "required": True,
    "description": "The request's id: the request's own X-Request-ID when it is 1-128 of"
    " [A-Za-z0-9._-], else one the service made. Error bodies repeat it as error.request_id and"
    " the service's log lines about the failure name it.",
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,128}$"},
}
_RETRY_AFTER = {
    "required": True,
    "description": "Seconds to wait before retrying",
    "schema": {"type": "integer", "minimum": 0},
}
_ERROR_HEADERS: dict[int, dict[str, Any]] = {
    401: {
        "WWW-Authenticate": {
            "required": True,
            "description": "The scheme to authenticate with",
            "schema": {"type": "string", "pattern": "^Bearer"},
        }
    },
    429: {"Retry-After": _RETRY_AFTER},
    503: {"Retry-After": _RETRY_AFTER},
}


def _describe(status: int) -> str:
    return {
        200: "OK",
        201: "Created",
        400: "Malformed request",
        401: "Missing or invalid credentials",
        403: "Credential of the wrong kind or role, or (enroll) a banned device id",
        404: "Not found",
        409: "Conflict",
        413: "Body too large",
        422: "Invalid field (named in error.field)",
        429: "Too many attempts",
        503: "Overloaded or database unavailable (see Retry-After)",
    }.get(status, "Response")


async def serve_openapi(request: web.Request) -> web.Response:
    return json_response(request.app[OPENAPI])
