"""Every validation rule: a clear 4xx naming the field, and nothing written."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.support.app import Api

NOW = datetime.now(UTC)
OK = {"status": "ok", "battery_pct": 50}

HEARTBEAT_CASES: list[tuple[str, Any, int, str | None]] = [
    ("missing status", {"battery_pct": 5}, 422, "status"),
    ("missing battery", {"status": "ok"}, 422, "battery_pct"),
    ("battery as string", {"status": "ok", "battery_pct": "5"}, 422, "battery_pct"),
    ("battery above 100", {"status": "ok", "battery_pct": 101}, 422, "battery_pct"),
    ("battery below 0", {"status": "ok", "battery_pct": -1}, 422, "battery_pct"),
    ("battery as float", {"status": "ok", "battery_pct": 5.5}, 422, "battery_pct"),
    ("empty status", {"status": "", "battery_pct": 5}, 422, "status"),
    ("status too long", {"status": "x" * 65, "battery_pct": 5}, 422, "status"),
    ("unknown field", {**OK, "colour": "red"}, 422, "colour"),
    ("ts without offset", {**OK, "ts": "2026-01-01T00:00:00"}, 422, "ts"),
    ("ts not a date", {**OK, "ts": "yesterday"}, 422, "ts"),
    ("ts in the future", {**OK, "ts": (NOW + timedelta(hours=1)).isoformat()}, 422, "ts"),
    ("ts older than retention", {**OK, "ts": (NOW - timedelta(days=3)).isoformat()}, 422, "ts"),
    ("extra not an object", {**OK, "extra": [1, 2]}, 422, "extra"),
    ("extra too many keys", {**OK, "extra": {str(i): i for i in range(33)}}, 422, "extra"),
    ("NUL in status", {"status": "o\x00k", "battery_pct": 5}, 422, "status"),
    ("NUL in extra", {**OK, "extra": {"k": "a\x00"}}, 422, "extra.k"),
    ("body is a list", [OK], 422, None),
    ("empty batch", {"heartbeats": []}, 422, "heartbeats"),
    (
        "batch with one bad element",
        {"heartbeats": [OK, OK, {"status": "ok", "battery_pct": 900}]},
        422,
        "heartbeats[2].battery_pct",
    ),
    (
        "batch element with old ts",
        {"heartbeats": [OK, {**OK, "ts": (NOW - timedelta(days=9)).isoformat()}]},
        422,
        "heartbeats[1].ts",
    ),
    ("batch too large", {"heartbeats": [OK] * 501}, 422, "heartbeats"),
]


@pytest.mark.parametrize(
    ("case", "body", "status", "field"), HEARTBEAT_CASES, ids=[c[0] for c in HEARTBEAT_CASES]
)
async def test_bad_heartbeats_are_refused_whole(
    api: Api, case: str, body: Any, status: int, field: str | None
) -> None:
    token = await api.enroll("v-1")
    r = await api.client.post("/v1/heartbeats", json=body, headers={"Authorization": f"Bearer {token}"})
    assert r.status == status, await r.text()
    error = (await r.json())["error"]
    assert error.get("field") == field
    assert error["message"]
    assert await api.count("SELECT count(*) FROM device_heartbeats") == 0


RAW_CASES = [
    ("malformed JSON", b'{"status": "ok", ', 400, "malformed_json"),
    ("empty body", b"", 400, "empty_body"),
    ("not UTF-8", b'{"status": "\xff"}', 400, "malformed_json"),
    ("a bare number", b"42", 422, "invalid_type"),
]


@pytest.mark.parametrize(("case", "raw", "status", "code"), RAW_CASES, ids=[c[0] for c in RAW_CASES])
async def test_malformed_bodies(api: Api, case: str, raw: bytes, status: int, code: str) -> None:
    token = await api.enroll("v-2")
    r = await api.client.post(
        "/v1/heartbeats",
        data=raw,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    assert r.status == status
    assert (await r.json())["error"]["code"] == code
    assert await api.count("SELECT count(*) FROM device_heartbeats") == 0


async def test_oversized_body_gets_413(api: Api) -> None:
    token = await api.enroll("v-3")
    big = b'{"status": "ok", "battery_pct": 5, "extra": {"k": "' + b"x" * (2 * 1024 * 1024) + b'"}}'
    r = await api.client.post(
        "/v1/heartbeats",
        data=big,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    assert r.status == 413
    assert (await r.json())["error"]["code"] == "body_too_large"
    assert await api.count("SELECT count(*) FROM device_heartbeats") == 0


DISPATCH_OK = {"request_id": "r-1", "device_id": "v-4", "action": "ping"}
DISPATCH_CASES = [
    ("missing request_id", {"device_id": "v-4", "action": "ping"}, 422, "request_id"),
    ("request_id with spaces", {**DISPATCH_OK, "request_id": "a b"}, 422, "request_id"),
    ("request_id too long", {**DISPATCH_OK, "request_id": "r" * 129}, 422, "request_id"),
    ("request_id injection", {**DISPATCH_OK, "request_id": "x'; DROP TABLE devices;--"}, 422, "request_id"),
    ("missing action", {"request_id": "r", "device_id": "v-4"}, 422, "action"),
    ("payload not an object", {**DISPATCH_OK, "payload": "wipe"}, 422, "payload"),
    ("device_id wrong type", {**DISPATCH_OK, "device_id": 7}, 422, "device_id"),
    ("unknown device", {**DISPATCH_OK, "device_id": "nobody"}, 404, "device_id"),
    ("unknown field", {**DISPATCH_OK, "priority": "high"}, 422, "priority"),
]


@pytest.mark.parametrize(
    ("case", "body", "status", "field"), DISPATCH_CASES, ids=[c[0] for c in DISPATCH_CASES]
)
async def test_bad_dispatches(api: Api, case: str, body: Any, status: int, field: str) -> None:
    await api.enroll("v-4")
    r = await api.client.post("/v1/dispatches", json=body, headers=api.op())
    assert r.status == status, await r.text()
    assert (await r.json())["error"]["field"] == field
    assert await api.count("SELECT count(*) FROM fcm_dispatches") == 0
    assert await api.count("SELECT count(*) FROM fcm_dispatch_keys") == 0


OTHER_CASES = [
    (
        "enroll: device_id with slash",
        "/v1/enroll",
        {"enrollment_token": "enr_x", "device_id": "a/b"},
        422,
        "device_id",
    ),
    ("enroll: missing token", "/v1/enroll", {"device_id": "a"}, 422, "enrollment_token"),
    (
        "token: expiry too short",
        "/v1/enrollment-tokens",
        {"expires_in_seconds": 1},
        422,
        "expires_in_seconds",
    ),
    ("token: zero uses", "/v1/enrollment-tokens", {"max_uses": 0}, 422, "max_uses"),
    ("token: unknown scope", "/v1/enrollment-tokens", {"scope": "admin"}, 422, "scope"),
    ("download: bad outcome", "/v1/apk-downloads", {"build_id": "b", "outcome": "exploded"}, 422, "outcome"),
    (
        "download: event_key without ts",
        "/v1/apk-downloads",
        {"build_id": "b", "outcome": "failed", "event_key": "k"},
        422,
        "ts",
    ),
    (
        "download: empty event_key",
        "/v1/apk-downloads",
        {"build_id": "b", "outcome": "failed", "event_key": ""},
        422,
        "event_key",
    ),
    (
        "download: negative bytes",
        "/v1/apk-downloads",
        {"build_id": "b", "outcome": "failed", "bytes_downloaded": -1},
        422,
        "bytes_downloaded",
    ),
]


@pytest.mark.parametrize(
    ("case", "path", "body", "status", "field"), OTHER_CASES, ids=[c[0] for c in OTHER_CASES]
)
async def test_other_bodies(api: Api, case: str, path: str, body: Any, status: int, field: str) -> None:
    token = await api.enroll("v-5")
    headers = {"Authorization": f"Bearer {token}"} if path == "/v1/apk-downloads" else api.op()
    before = await api.count("SELECT count(*) FROM enrollment_tokens")
    r = await api.client.post(path, json=body, headers=headers)
    assert r.status == status, await r.text()
    assert (await r.json())["error"]["field"] == field
    assert await api.count("SELECT count(*) FROM apk_download_events") == 0
    assert await api.count("SELECT count(*) FROM enrollment_tokens") == before
    assert await api.count("SELECT count(*) FROM devices") == 1


@pytest.mark.parametrize("limit", ["0", "1001", "abc", "-5", "1e3", "5.0", "+5", "null", ""])
async def test_bad_limit(api: Api, limit: str) -> None:
    await api.enroll("v-6")
    r = await api.client.get(f"/v1/devices/v-6/heartbeats?limit={limit}", headers=api.op())
    assert r.status == 422
    assert (await r.json())["error"]["field"] == "limit"


async def test_unknown_route_and_method_are_json_errors(api: Api) -> None:
    r = await api.client.get("/v1/nothing-here")
    assert r.status == 404 and (await r.json())["error"]["code"] == "not_found"
    r = await api.client.put("/v1/heartbeats")
    assert r.status == 405 and (await r.json())["error"]["code"] == "method_not_allowed"
