"""Error hygiene and request ids: every response carries X-Request-ID (the client's own when sane),
every error body repeats it as `error.request_id`, and no error body carries an exception's text,
SQL or a class name; the cause goes to the log under the request id."""

from __future__ import annotations

import asyncio
import logging
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from tests.support.app import Api

GENERATED = re.compile(r"[0-9a-f]{32}")
# What must never reach a client: SQL, database and Python vocabulary of the cause.
LEAKS = re.compile(
    r"Error\b|Exception|Traceback|violat|constraint|INSERT|SELECT|COPY|relation|device_heartbeats|"
    r"asyncpg|psycopg|sqlstate|Overflow|int64|int16",
    re.IGNORECASE,
)


def dev(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def recent(seconds_ago: int) -> str:
    return (datetime.now(UTC) - timedelta(seconds=seconds_ago)).isoformat()


async def test_every_response_carries_a_request_id_and_a_sane_one_given_is_kept(api: Api) -> None:
    token = await api.enroll("rid-1")
    ok = await api.client.post("/v1/heartbeats", json={"status": "ok", "battery_pct": 5}, headers=dev(token))
    assert ok.status == 200 and GENERATED.fullmatch(ok.headers["X-Request-ID"])
    for path in ("/health", "/metrics", "/openapi.json"):
        r = await api.client.get(path)
        assert GENERATED.fullmatch(r.headers["X-Request-ID"]), path
    given = "client-42_a.B"
    r = await api.client.get("/health", headers={"X-Request-ID": given})
    assert r.headers["X-Request-ID"] == given
    ids = {(await api.client.get("/health")).headers["X-Request-ID"] for _ in range(5)}
    assert len(ids) == 5


@pytest.mark.parametrize("offered", ["x" * 129, "two words", "a;b", "ü-id", "a/b", "a\tb", "id%0d%0aX: y"])
async def test_an_insane_request_id_is_replaced_by_a_generated_one(api: Api, offered: str) -> None:
    r = await api.client.get("/health", headers={"X-Request-ID": offered})
    assert GENERATED.fullmatch(r.headers["X-Request-ID"])
    r = await api.client.get("/v1/devices/x", headers={"X-Request-ID": offered})  # 401: an error body
    assert r.status == 401
    assert (await r.json())["error"]["request_id"] == r.headers["X-Request-ID"] != offered


async def test_every_kind_of_error_body_carries_the_request_id_of_its_header(api: Api) -> None:
    token = await api.enroll("rid-2")
    attempts: list[tuple[str, str, dict[str, str], Any]] = [
        ("POST", "/v1/heartbeats", {}, {"status": "ok", "battery_pct": 5}),  # 401
        ("GET", "/v1/nowhere", {}, None),  # 404 from the router
        ("DELETE", "/v1/heartbeats", dev(token), None),  # 405
        ("POST", "/v1/heartbeats", dev(token), {"status": "ok", "battery_pct": 500}),  # 422
        ("POST", "/v1/heartbeats", dev(token), "not json"),  # 400
    ]
    statuses = []
    for i, (method, path, headers, body) in enumerate(attempts):
        rid = f"err-{i}"
        sent = {**headers, "X-Request-ID": rid}
        if isinstance(body, str):
            r = await api.client.request(method, path, data=body, headers=sent)
        else:
            r = await api.client.request(method, path, json=body, headers=sent)
        statuses.append(r.status)
        assert r.headers["X-Request-ID"] == rid
        error = (await r.json())["error"]
        assert error["request_id"] == rid
        assert not LEAKS.search(error["message"]), error
    assert statuses == [401, 404, 405, 422, 400]


async def test_a_row_the_database_refuses_fails_alone_with_a_generic_422_and_its_cause_logged_under_its_id(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    """A constraint validation does not know (added here) makes the database refuse one device's
    heartbeat; that request gets 422 with nothing of the cause, the other device loses nothing."""
    caplog.set_level(logging.INFO)
    conn = await asyncpg.connect(api.db_url)
    try:
        await conn.execute(
            "ALTER TABLE device_heartbeats ADD CONSTRAINT no_poison CHECK (status <> 'poison')"
        )
    finally:
        await conn.close()
    bad_token, good_token = await api.enroll("rid-bad"), await api.enroll("rid-good")

    async def good(i: int) -> int:
        r = await api.client.post(
            "/v1/heartbeats",
            json={"status": "ok", "battery_pct": 50, "ts": recent(10 * i + 5)},
            headers=dev(good_token),
        )
        return r.status

    async def bad() -> tuple[int, dict[str, Any], str]:
        r = await api.client.post(
            "/v1/heartbeats",
            json={"status": "poison", "battery_pct": 50},
            headers={**dev(bad_token), "X-Request-ID": "poison-1"},
        )
        return r.status, await r.json(), r.headers["X-Request-ID"]

    results = await asyncio.gather(bad(), *(good(i) for i in range(40)))
    (status, body, header), good_statuses = results[0], results[1:]
    assert good_statuses == [200] * 40
    assert await api.count("SELECT count(*) FROM device_heartbeats WHERE device_id = 'rid-good'") == 40
    assert status == 422 and header == "poison-1"
    assert body["error"]["code"] == "rejected" and body["error"]["request_id"] == "poison-1"
    assert not LEAKS.search(body["error"]["message"]), body
    assert await api.count("SELECT count(*) FROM device_heartbeats WHERE device_id = 'rid-bad'") == 0
    logged = [r for r in caplog.records if "poison-1" in r.getMessage()]
    assert logged and any(
        r.exc_info and isinstance(r.exc_info[1], asyncpg.CheckViolationError) for r in logged
    ), [r.getMessage() for r in logged]


async def test_the_openapi_document_declares_the_request_id_on_every_response_and_in_error_bodies(
    api: Api,
) -> None:
    spec = await (await api.client.get("/openapi.json")).json()
    responses = [
        (path, method, status, entry)
        for path, ops in spec["paths"].items()
        for method, op in ops.items()
        for status, entry in op["responses"].items()
    ]
    assert len(responses) > 20
    for path, method, status, entry in responses:
        assert "X-Request-ID" in entry.get("headers", {}), (path, method, status)
    detail = spec["components"]["schemas"]["ErrorDetail"]["properties"]
    assert "request_id" in detail
    retry = spec["paths"]["/v1/heartbeats"]["post"]["responses"]["503"]["headers"]
    assert {"Retry-After", "X-Request-ID"} <= retry.keys()
