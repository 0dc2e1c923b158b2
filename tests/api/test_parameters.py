"""The README's promise, checked against the endpoint table itself: every declared query
parameter (and every typed path parameter) of every endpoint answers a malformed or
out-of-range value with 422 naming it, and the parser reads values strictly from their text."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Annotated, Literal
from urllib.parse import quote

import msgspec
import pytest
from msgspec import Meta
from msgspec import inspect as mi

from service.api.endpoint import Endpoint
from service.api.errors import ApiError
from service.api.parameters import DeviceCommandsQuery, Parameters, parse
from service.api.routes import ENDPOINTS
from tests.support.app import Api

# An existing value for each path parameter, so that only the parameter under test is wrong.
PATH_VALUES = {
    "device_id": "param-dev",
    "request_id": "param-req",
    "build_id": "param-build",
    "token_id": "1",
    "webhook_id": "1",
    "bulk_id": "1",
}


def _bare(t: mi.Type) -> mi.Type:
    while isinstance(t, mi.Metadata):
        t = t.type
    if isinstance(t, mi.UnionType):
        (t,) = [u for u in t.types if not isinstance(u, mi.NoneType)]
    while isinstance(t, mi.Metadata):
        t = t.type
    return t


def malformed(t: mi.Type) -> list[str]:
    """Values a parameter of type `t` must refuse: of the wrong form, past each bound it
    declares, and holding U+0000."""
    match _bare(t):
        case mi.IntType(ge=ge, le=le):
            values = ["x", "1.5", "1e3", " 1", "99999999999999999999"]
            values += [str(ge - 1)] if ge is not None else []
            return values + ([str(le + 1)] if le is not None else []) + ["1\x00"]
        case mi.FloatType(ge=ge, le=le):
            values = ["x", "nan", "inf", "1,5"]
            values += [str(ge - 1)] if ge is not None else []
            return values + ([str(le * 2 + 1)] if le is not None else []) + ["1\x00"]
        case mi.DateTimeType():
            return ["yesterday", "2025-11-01T00:00:00", "0001-01-01T00:00:00+14:00", "null"]
        case mi.LiteralType(values=choices):
            return ["not-a-choice", "null", f"{choices[0]}\x00"]
        case mi.StrType(min_length=least, max_length=most, pattern=pattern):
            values = ["a\x00"]
            values += [""] if least else []
            values += ["a" * (most + 1)] if most is not None else []
            return values + (["not valid!"] if pattern is not None else [])
    raise AssertionError(f"no malformed values for {t!r}")


def with_parameters() -> Iterator[tuple[Endpoint, mi.StructType]]:
    """Every endpoint that declares parameters, with its struct's type info."""
    for ep in ENDPOINTS:
        if ep.parameters is None:
            continue
        info = mi.type_info(ep.parameters)
        assert isinstance(info, mi.StructType)
        yield ep, info


def _cases() -> list[tuple[Endpoint, str, str, str]]:
    cases = []
    for ep, info in with_parameters():
        for f in info.fields:
            where = "path" if f.encode_name in ep.path_names else "query"
            if where == "path" and isinstance(_bare(f.type), mi.StrType):
                continue  # a path id is looked up as given: one that names nothing is 404
            # A path holding U+0000 names nothing: 404 for any path parameter, typed or not, before
            # the parser (`service.api.middleware.refuse_nul_paths`).
            values = [v for v in malformed(f.type) if where == "query" or "\x00" not in v]
            cases += [(ep, f.encode_name, where, value) for value in values]
    return cases


CASES = _cases()


def test_every_endpoint_with_parameters_is_walked() -> None:
    walked = {(ep.method, ep.path) for ep, *_ in CASES}
    declaring = {(ep.method, ep.path) for ep in ENDPOINTS if ep.parameters is not None and ep.query_names}
    assert declaring <= walked and ("DELETE", "/v1/enrollment-tokens/{token_id}") in walked
    assert len(declaring) >= 13


async def test_every_malformed_parameter_of_every_endpoint_is_422_naming_it(api: Api) -> None:
    device_token = await api.enroll("param-dev")
    device = {"Authorization": f"Bearer {device_token}"}
    failures = []
    for ep, name, where, value in CASES:
        path = ep.path
        for p in ep.path_names:
            path = path.replace(f"{{{p}}}", quote(value if p == name else PATH_VALUES[p], safe=""))
        params = {name: value} if where == "query" else {}
        headers = device if ep.auth == "device" else api.op()
        r = await api.client.request(ep.method, path, params=params, headers=headers)
        body = await r.json()
        if r.status != 422 or body["error"].get("field") != name or name not in body["error"]["message"]:
            failures.append((ep.method, ep.path, name, value, r.status, body))
    assert not failures, failures[:10]
    assert await api.count("SELECT count(*) FROM devices WHERE credential_revoked_at IS NOT NULL") == 0


async def test_undeclared_query_parameters_are_ignored(api: Api) -> None:
    await api.enroll("param-dev")
    r = await api.client.get(
        "/v1/devices/param-dev/heartbeats?_=1700000000&device_id=other", headers=api.op()
    )
    assert r.status == 200 and (await r.json())["device_id"] == "param-dev"


async def test_a_repeated_parameter_counts_with_its_first_value(api: Api) -> None:
    await api.enroll("param-dev")
    r = await api.client.get("/v1/devices?limit=1&limit=abc", headers=api.op())
    assert r.status == 200
    r = await api.client.get("/v1/devices?limit=abc&limit=1", headers=api.op())
    assert r.status == 422 and (await r.json())["error"]["field"] == "limit"


async def test_a_malformed_parameter_is_422_before_authentication(api: Api) -> None:
    # The rules are public (GET /openapi.json), parsing needs no database: whoever asks.
    r = await api.client.get("/v1/devices?limit=0")
    assert r.status == 422 and (await r.json())["error"]["field"] == "limit"
    assert (await api.client.get("/v1/devices?limit=1")).status == 401


# --- the parser alone ---------------------------------------------------------------------------


class Sample(Parameters):
    n: Annotated[int, Meta(ge=-5, le=5)] = 0
    x: float | None = None
    at: Annotated[datetime, Meta(tz=True)] | None = None
    pick: Literal["a", "b"] | None = None
    text: str | None = None


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({}, Sample()),
        ({"n": "-5"}, Sample(n=-5)),
        ({"n": "05"}, Sample(n=5)),
        ({"x": "1.5e2"}, Sample(x=150.0)),
        ({"x": "-0.25"}, Sample(x=-0.25)),
        ({"pick": "b"}, Sample(pick="b")),
        ({"text": "null"}, Sample(text="null")),  # text like any other, never "absent"
        ({"at": "2025-11-01T02:00:00+02:00"}, Sample(at=datetime(2025, 11, 1, tzinfo=UTC))),
        ({"unknown": "1"}, Sample()),
    ],
)
def test_values_are_read_from_their_text(query: dict[str, str], expected: Sample) -> None:
    parsed = parse(Sample, {}, query)
    assert parsed == expected
    if parsed.at is not None:
        assert parsed.at.tzinfo is UTC


@pytest.mark.parametrize(
    ("name", "raw", "code"),
    [
        ("n", "6", "invalid_value"),
        ("n", "+1", "invalid_value"),
        ("n", "1_0", "invalid_value"),
        ("n", "\u0663", "invalid_value"),  # ARABIC-INDIC DIGIT THREE: int() would take it
        ("n", "1" * 30, "out_of_range"),
        ("x", "1e999", "invalid_value"),
        ("x", "Infinity", "invalid_value"),
        ("at", "2025-11-01T00:00:00", "invalid_value"),
        ("at", "9999-12-31T23:59:59-14:00", "out_of_range"),
        ("pick", "A", "invalid_value"),
        ("text", "a\x00b", "invalid_value"),
    ],
)
def test_a_malformed_value_is_422_naming_its_parameter(name: str, raw: str, code: str) -> None:
    with pytest.raises(ApiError) as refused:
        parse(Sample, {}, {name: raw})
    assert (refused.value.status, refused.value.field, refused.value.code) == (422, name, code)
    assert refused.value.message.startswith(f"{name}: ")


def test_a_path_parameter_is_read_from_the_path_not_the_query() -> None:
    parsed = parse(DeviceCommandsQuery, {"device_id": "from-path"}, {"device_id": "from-query", "limit": "3"})
    assert (parsed.device_id, parsed.limit) == ("from-path", 3)


def test_a_missing_required_parameter_is_named() -> None:
    class Needs(Parameters):
        n: int

    with pytest.raises(ApiError) as refused:
        parse(Needs, {}, {})
    assert (refused.value.status, refused.value.field) == (422, "n")
    assert msgspec.structs.asdict(parse(Needs, {}, {"n": "7"})) == {"n": 7}


# aiohttp refuses a request line over 8,190 bytes before routing, with a bare 400 no endpoint
# declares; the query parameters' bounds must keep the longest query they admit under that.
REQUEST_LINE_MAX = 8190


def _longest_encoded(t: mi.Type) -> int:
    """The longest value a parameter of type `t` admits, percent-encoded (a character that is
    not ASCII takes up to 4 UTF-8 bytes of 3 characters each; a pattern of ASCII event types
    does not change the bound the parser checks before it)."""
    match _bare(t):
        case mi.IntType() | mi.FloatType():
            return 24
        case mi.DateTimeType():
            return 3 * 40
        case mi.LiteralType(values=choices):
            return 3 * max(len(str(c)) for c in choices)
        case mi.StrType(max_length=most):
            assert most is not None, "an unbounded string parameter admits any request line"
            return 12 * most
    raise AssertionError(f"no bound for {t!r}")


def test_the_longest_request_each_endpoint_admits_fits_aiohttp_s_request_line() -> None:
    over = []
    for ep, info in with_parameters():
        length = len(f"{ep.method} {ep.path}? HTTP/1.1")
        # Path ids are looked up as given (a long one names nothing); the query is bounded.
        query = [f for f in info.fields if f.encode_name not in ep.path_names]
        length += sum(len(f.encode_name) + 2 + _longest_encoded(f.type) for f in query)
        if length > REQUEST_LINE_MAX:
            over.append((ep.method, ep.path, length))
    assert not over, over
