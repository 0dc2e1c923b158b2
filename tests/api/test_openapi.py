"""The OpenAPI document is built from whatever endpoint table it is given (no database needed),
and an endpoint's parameters are documented from the struct they are parsed with."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
import pytest
from aiohttp import web
from msgspec import Meta

from service.api import schemas
from service.api.endpoint import Endpoint
from service.api.openapi_doc import build_openapi, schema_types
from service.api.parameters import Parameters, fields_of
from service.api.routes import ENDPOINTS


async def _handler(request: web.Request) -> web.Response:
    return web.Response()


async def _thing_handler(request: web.Request, params: ThingParameters) -> web.Response:
    return web.Response()


class ThingParameters(Parameters):
    thing_id: int
    limit: int | None = None


ENDPOINT = Endpoint(
    method="POST",
    path="/v1/things/{thing_id}",
    handler=_thing_handler,
    auth="admin",
    summary="A thing",
    request=(schemas.Heartbeat, schemas.HeartbeatBatch),
    parameters=ThingParameters,
    responses={201: schemas.Dispatch},
)


def test_error_statuses_follow_from_auth_request_and_path() -> None:
    op = build_openapi([ENDPOINT])["paths"]["/v1/things/{thing_id}"]["post"]
    assert sorted(op["responses"]) == ["201", "400", "401", "403", "422", "503"]
    assert "WWW-Authenticate" in op["responses"]["401"]["headers"]
    assert op["security"] == [{"operator": []}]


def test_parameters_and_a_body_of_several_types_come_from_the_endpoint() -> None:
    op = build_openapi([ENDPOINT])["paths"]["/v1/things/{thing_id}"]["post"]
    assert [(p["name"], p["in"], p["schema"]) for p in op["parameters"]] == [
        ("thing_id", "path", {"type": "integer"}),
        ("limit", "query", {"type": "integer"}),
    ]
    body = op["requestBody"]["content"]["application/json"]["schema"]
    assert body == {
        "oneOf": [{"$ref": "#/components/schemas/Heartbeat"}, {"$ref": "#/components/schemas/HeartbeatBatch"}]
    }


def test_an_open_endpoint_without_a_body_declares_only_its_own_statuses() -> None:
    open_ = Endpoint(
        method="GET", path="/ping", handler=_handler, auth="none", summary="Ping", responses={200: None}
    )
    assert sorted(build_openapi([open_])["paths"]["/ping"]["get"]["responses"]) == ["200"]


def test_schema_types_are_every_body_type_once() -> None:
    assert schema_types([ENDPOINT]) == (
        schemas.Heartbeat,
        schemas.HeartbeatBatch,
        schemas.Dispatch,
        schemas.ErrorBody,
    )


class Page(Parameters, kw_only=True):  # kw_only: a required field after optional ones
    shelf: Annotated[str, Meta(min_length=1)]
    limit: Annotated[int, Meta(ge=1, le=10, description="Page size")] = 5
    kind: Annotated[str, Meta(pattern=r"^[a-z]+\Z")] | None = None
    from_: int | None = msgspec.field(default=None, name="from")
    required_flag: int


def viewer_get(path: str, handler: Any, parameters: Any) -> Endpoint:
    """A viewer's GET of `path` with `parameters`, as a test table entry."""
    return Endpoint(
        method="GET", path=path, handler=handler, auth="viewer", summary="x", parameters=parameters
    )


async def _page_handler(request: web.Request, params: Page) -> web.Response:
    return web.Response()


def test_parameters_are_documented_with_their_rules_defaults_and_requiredness() -> None:
    ep = viewer_get("/v1/shelves/{shelf}/books", _page_handler, Page)
    doc = build_openapi([ep])
    op = doc["paths"]["/v1/shelves/{shelf}/books"]["get"]
    assert op["parameters"] == [
        {"name": "shelf", "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}},
        {
            "name": "limit",
            "in": "query",
            "required": False,
            "schema": {
                "description": "Page size",
                "type": "integer",
                "minimum": 1,
                "maximum": 10,
                "default": 5,
            },
        },
        # Python's end-of-value \Z is ECMA-262's $; absent, not null, is how a parameter is missing.
        {
            "name": "kind",
            "in": "query",
            "required": False,
            "schema": {"type": "string", "pattern": "^[a-z]+$"},
        },
        {"name": "from", "in": "query", "required": False, "schema": {"type": "integer"}},
        {"name": "required_flag", "in": "query", "required": True, "schema": {"type": "integer"}},
    ]
    # A malformed parameter is a 422, never a 400 (no body); the struct is no body schema.
    assert sorted(op["responses"]) == ["401", "403", "422", "503"]
    assert "Page" not in doc["components"]["schemas"]


def test_a_path_of_plain_ids_declares_no_422() -> None:
    class ShelfPath(Parameters):
        shelf: Annotated[str, Meta(min_length=1)]

    async def shelf(request: web.Request, params: ShelfPath) -> web.Response:
        return web.Response()

    ep = viewer_get("/v1/shelves/{shelf}", shelf, ShelfPath)
    assert "422" not in build_openapi([ep])["paths"]["/v1/shelves/{shelf}"]["get"]["responses"]


class Loose(Parameters):
    shelf: str | None = None


class Nested(Parameters):
    shelf: list[int]


async def _two(request: web.Request, params: Any) -> web.Response:
    return web.Response()


@pytest.mark.parametrize(
    ("path", "handler", "parameters", "complaint"),
    [
        ("/v1/shelves/{shelf}", _handler, None, "not declared"),
        ("/v1/shelves/{shelf}", _two, Loose, "must be required"),
        ("/v1/shelves/{shelf}", _handler, Page, "takes 1 arguments"),
        ("/v1/shelves", _two, None, "takes 2 arguments"),
        ("/v1/shelves", _two, Nested, "cannot be of type"),
    ],
)
def test_a_table_entry_the_parser_could_not_honour_fails_when_it_is_built(
    path: str, handler: Any, parameters: Any, complaint: str
) -> None:
    with pytest.raises(TypeError, match=complaint):
        viewer_get(path, handler, parameters)


def test_every_endpoint_documents_exactly_the_parameters_it_parses() -> None:
    doc = build_openapi(ENDPOINTS)
    for ep in ENDPOINTS:
        op = doc["paths"][ep.path][ep.method.lower()]
        documented = [(p["name"], p["in"], p["required"]) for p in op.get("parameters", [])]
        parsed = [
            (f.name, "path" if f.name in ep.path_names else "query", f.required)
            for f in (fields_of(ep.parameters) if ep.parameters else ())
        ]
        assert sorted(documented) == sorted(parsed), (ep.method, ep.path)
        if any(where == "query" for _, where, _ in documented):
            assert "422" in op["responses"] and (ep.request is not None or "400" not in op["responses"])
