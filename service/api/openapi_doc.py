"""`GET /openapi.json`: OpenAPI 3.1 built from the endpoint table and the msgspec schemas."""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

OPENAPI = web.AppKey("openapi", dict)


def build_openapi() -> dict[str, Any]:
    from service.api import schemas
    from service.api.routes import ENDPOINTS

    _, components = msgspec.json.schema_components(
        schemas.SCHEMA_TYPES, ref_template="#/components/schemas/{name}"
    )
    paths: dict[str, dict[str, Any]] = {}
    for ep in ENDPOINTS:
        op: dict[str, Any] = {"summary": ep.summary, "operationId": ep.handler.__name__}
        params = [
            {"name": name[1:-1], "in": "path", "required": True, "schema": _path_schema(name[1:-1])}
            for name in ep.path.split("/")
            if name.startswith("{")
        ]
        params += [
            {"name": q, "in": "query", "required": False, "schema": _query_schema(q)} for q in ep.query
        ]
        if params:
            op["parameters"] = params
        if ep.auth == "device":
            op["security"] = [{"device": []}]
        elif ep.auth != "none":
            op["security"] = [{"operator": []}]
            op["description"] = _ROLES[ep.auth]
        if ep.request is not None:
            op["requestBody"] = {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": f"#/components/schemas/{ep.request.__name__}"}}
                },
            }
        responses: dict[str, Any] = {}
        declared = dict(ep.responses)
        if ep.path.startswith("/v1/"):  # every /v1/ endpoint needs the database
            declared.setdefault(503, schemas.ErrorBody)
        for status, body in sorted(declared.items()):
            entry: dict[str, Any] = {"description": _describe(status)}
            if body is not None:
                entry["content"] = {
                    "application/json": {"schema": {"$ref": f"#/components/schemas/{body.__name__}"}}
                }
            entry["headers"] = {"X-Request-ID": _REQUEST_ID}
            if body is schemas.ErrorBody and status in _ERROR_HEADERS:
                entry["headers"] |= _ERROR_HEADERS[status]
            responses[str(status)] = entry
        op["responses"] = responses
        paths.setdefault(ep.path, {})[ep.method.lower()] = op
    if "/v1/heartbeats" in paths:
        body = paths["/v1/heartbeats"]["post"]["requestBody"]["content"]["application/json"]
        body["schema"] = {
            "oneOf": [
                {"$ref": "#/components/schemas/Heartbeat"},
                {"$ref": "#/components/schemas/HeartbeatBatch"},
            ]
        }
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
    "viewer": "Any operator: roles `admin` and `viewer`.",
    "admin": "Operators with role `admin` only (a `viewer` gets 403).",
}


_QUERY_SCHEMAS: dict[str, dict[str, Any]] = {
    "limit": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
    "from": {"type": "string", "format": "date-time", "description": "Default: a span before `to`"},
    "to": {"type": "string", "format": "date-time", "description": "Default: now"},
    "bucket": {"type": "string", "enum": ["1h", "1d"], "default": "1h"},
}


def _query_schema(name: str) -> dict[str, Any]:
    return _QUERY_SCHEMAS[name]


def _path_schema(name: str) -> dict[str, Any]:
    if name == "token_id":  # a database id
        return {"type": "integer", "format": "int64", "minimum": 1}
    return {"type": "string", "minLength": 1}


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
    return web.json_response(request.app[OPENAPI])
