"""The OpenAPI document is built from whatever endpoint table it is given (no database needed)."""

from __future__ import annotations

from aiohttp import web

from service.api import schemas
from service.api.endpoint import Endpoint
from service.api.openapi_doc import build_openapi, schema_types


async def _handler(request: web.Request) -> web.Response:
    return web.Response()


ENDPOINT = Endpoint(
    method="POST",
    path="/v1/things/{thing_id}",
    handler=_handler,
    auth="admin",
    summary="A thing",
    request=(schemas.Heartbeat, schemas.HeartbeatBatch),
    path_params={"thing_id": {"type": "integer"}},
    query={"limit": {"type": "integer"}},
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
