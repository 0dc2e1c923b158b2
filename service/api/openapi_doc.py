"""`GET /openapi.json`: OpenAPI 3.1 built from the endpoint table and the msgspec schemas."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import msgspec
from aiohttp import web

from service.api import schemas
from service.api.endpoint import Endpoint
from service.api.parameters import Parameters
from service.api.responses import json_response
from service.events import catalogue

OPENAPI = web.AppKey("openapi", dict)


def schema_types(endpoints: Iterable[Endpoint]) -> tuple[type, ...]:
    """Every body type the endpoints take or answer with, each once, in table order."""
    types: dict[type, None] = {}
    for ep in endpoints:
        refusals = (schemas.ErrorBody,) if ep.parameters is not None else ()
        for t in (*ep.request_types, *ep.responses.values(), *_derived(ep).values(), *refusals):
            if t is not None:
                types.setdefault(t, None)
    return tuple(types)


# A path id any text is: it names a resource or none (404), it cannot be malformed.
_PATH_ID: dict[str, Any] = {"type": "string", "minLength": 1}


def _derived(ep: Endpoint, parameters: Sequence[dict[str, Any]] = ()) -> dict[int, type | None]:
    """The error statuses that follow from what the endpoint is, not from its handler."""
    derived: dict[int, type | None] = {}
    if ep.request is not None:
        derived[400] = schemas.ErrorBody  # malformed body
    if ep.auth != "none":
        derived[401] = derived[403] = schemas.ErrorBody  # no credential; wrong kind or role
    if ep.request is not None or any(p["in"] == "query" or p["schema"] != _PATH_ID for p in parameters):
        derived[422] = schemas.ErrorBody  # a field or parameter malformed or out of bounds
    if ep.path.startswith("/v1/"):
        derived[503] = schemas.ErrorBody  # every /v1/ endpoint needs the database
    return derived


def _ecma_patterns(value: Any) -> Any:
    """`value` with each `pattern` in JSON Schema's dialect: Python's end-of-value `\\Z` (see
    `service.api.schemas`) is ECMA-262's `$`."""
    if isinstance(value, dict):
        return {
            k: (
                v[:-2] + "$"
                if k == "pattern" and isinstance(v, str) and v.endswith("\\Z")
                else _ecma_patterns(v)
            )
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_ecma_patterns(v) for v in value]
    return value


def _parameter_schema(prop: dict[str, Any]) -> dict[str, Any]:
    """A parameter's schema from its struct field's: absent is how a parameter is null."""
    schema = dict(prop)
    if schema.get("default", ...) is None:
        del schema["default"]
    options = schema.get("anyOf")
    if options is not None and {"type": "null"} in options:
        rest = [o for o in options if o != {"type": "null"}]
        del schema["anyOf"]
        schema = {**rest[0], **schema} if len(rest) == 1 else {"anyOf": rest, **schema}
    if "type" not in schema and all(isinstance(v, str) for v in schema.get("enum", [0])):
        schema = {"type": "string", **schema}
    return schema


def _parameters(ep: Endpoint, struct: dict[str, Any]) -> list[dict[str, Any]]:
    """The endpoint's parameters as OpenAPI lists them, from the JSON schema of its
    `Parameters` struct: path ones first, in path order, then the query ones."""
    props, required = struct["properties"], set(struct.get("required", ()))
    path = [{"name": n, "in": "path", "required": True} for n in ep.path_names]
    path = [{**p, "schema": _parameter_schema(props[p["name"]])} for p in path]
    return path + [
        {"name": n, "in": "query", "required": n in required, "schema": _parameter_schema(props[n])}
        for n in ep.query_names
    ]


def _ref(t: type) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{t.__name__}"}


def build_openapi(endpoints: Sequence[Endpoint]) -> dict[str, Any]:
    """The OpenAPI 3.1 document of `endpoints`, as starlette's SchemaGenerator takes its routes."""
    # The event catalogue's payloads are documented beside the bodies (`Event.payload`); the
    # parameter structs are taken apart into parameters, and only what they refer to stays.
    bodies = schema_types(endpoints)
    structs: tuple[type[Parameters], ...] = tuple(
        dict.fromkeys(ep.parameters for ep in endpoints if ep.parameters is not None)
    )
    _, components = msgspec.json.schema_components(
        (*bodies, *catalogue.PAYLOADS, *structs), ref_template="#/components/schemas/{name}"
    )
    components = _ecma_patterns(components)
    taken = {t.__name__ for t in (*bodies, *catalogue.PAYLOADS)}
    parameter_structs = {t: components[t.__name__] for t in structs}
    for t in structs:
        if t.__name__ not in taken:
            del components[t.__name__]
    paths: dict[str, dict[str, Any]] = {}
    for ep in endpoints:
        op: dict[str, Any] = {"summary": ep.summary, "operationId": ep.handler.__name__}
        params = _parameters(ep, parameter_structs[ep.parameters]) if ep.parameters is not None else []
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
        declared = {**_derived(ep, params), **ep.responses}
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
        # Each event type's payload schema and version (`service.events.catalogue`).
        "x-event-catalogue": {p.TYPE: {"version": p.VERSION, "payload": _ref(p)} for p in catalogue.PAYLOADS},
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
