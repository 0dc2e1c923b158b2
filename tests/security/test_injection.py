"""SQL-injection strings in every path parameter, query parameter, header and body field of every
endpoint: never a 5xx, every table still there afterwards, and the strings stored verbatim
wherever a field stores text."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

import asyncpg
import pytest

from service.api.state import SERVICES
from service.api.throttle import FailureThrottle
from service.settings import StorageMode
from tests.support.app import Api
from tests.support.cluster import PROJECT_TABLES

INJECTIONS = [
    "'; DROP TABLE devices; --",
    "' OR '1'='1",
    "' OR 1=1 --",
    '" OR ""="',
    "$$",
    "$1",
    "$tag$ x $tag$",
    "admin'--",
    "') OR ('1'='1",
    "1; SELECT pg_sleep(5)",
    "' UNION SELECT * FROM sessions--",
    "\\'; DROP TABLE users; --",
    "%' OR '%'='",
    "_%",
    "\u2019 OR \u20181\u2019=\u20181",  # unicode quotes
    "\u02bc; DROP TABLE devices; --",  # modifier letter apostrophe
    "\uff07 OR \uff11=\uff11",  # fullwidth
    "E'\\x27'",
    '{"$ne": null}',
    "../../etc/passwd",
]
assert all(len(s) <= 32 for s in INJECTIONS)  # fits the shortest text column (network)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def tables_intact(api: Api) -> None:
    conn = await asyncpg.connect(api.db_url)
    try:
        for table in PROJECT_TABLES:
            assert await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", table), table
        assert await conn.fetchval("SELECT count(*) FROM users") == 1
        assert await conn.fetchval("SELECT count(*) FROM sessions WHERE revoked_at IS NULL") == 1
    finally:
        await conn.close()


@pytest.mark.parametrize("evil", INJECTIONS)
async def test_injection_in_path_and_query_parameters(api: Api, mode: StorageMode, evil: str) -> None:
    await api.enroll("sqli-dev")
    p = quote(evil, safe="")
    for method, path in [
        ("GET", f"/v1/devices/{p}"),
        ("POST", f"/v1/devices/{p}/revoke"),
        ("GET", f"/v1/devices/{p}/heartbeats"),
        ("GET", f"/v1/devices/{p}/dispatches"),
        ("GET", f"/v1/dispatches/{p}"),
    ]:
        r = await api.client.request(method, path, headers=api.op())
        assert r.status == 404, (method, path, await r.text())
        assert (await r.json())["error"]["code"] == "not_found"
    # token_id is an integer: anything else is malformed, 422 naming it (or, for a path aiohttp's
    # router does not take apart as a token id, its own 404 naming nothing)
    for path in (f"/v1/enrollment-tokens/{p}", f"/v1/enrollment-tokens/1{p}"):
        r = await api.client.delete(path, headers=api.op())
        error = (await r.json())["error"]
        assert (r.status, error.get("field")) in ((422, "token_id"), (404, None)), (path, error)
    for listing in ("heartbeats", "dispatches"):
        r = await api.client.get(f"/v1/devices/sqli-dev/{listing}?limit={p}", headers=api.op())
        assert r.status == 422 and (await r.json())["error"]["field"] == "limit"
        # unknown query parameters are ignored, not interpreted
        r = await api.client.get(f"/v1/devices/sqli-dev/{listing}?device_id={p}&{p}={p}", headers=api.op())
        assert r.status == 200 and (await r.json())["device_id"] == "sqli-dev"
    for header in (f"Bearer {evil}", f"Bearer op_{evil}", f"Bearer dev_{evil}", evil):
        r = await api.client.get("/v1/devices/sqli-dev", headers={"Authorization": header})
        assert r.status == 401
    assert await api.count("SELECT count(*) FROM devices WHERE credential_revoked_at IS NULL") == 1
    await tables_intact(api)


async def test_injection_in_every_body_field_is_refused_or_stored_verbatim(
    api: Api, mode: StorageMode
) -> None:
    device_token = await api.enroll("sqli-dev")
    device = bearer(device_token)
    now = datetime.now(UTC).replace(microsecond=0)
    conn = await asyncpg.connect(api.db_url)
    try:
        for i, evil in enumerate(INJECTIONS):
            # heartbeat: every text field, and a key and value of extra
            ts = now - timedelta(seconds=10 * (i + 1))
            hb = {
                "status": evil,
                "battery_pct": 50,
                "ts": ts.isoformat(),
                "app_version": evil,
                "network": evil,
                "extra": {evil: evil},
            }
            r = await api.client.post("/v1/heartbeats", json=hb, headers=device)
            assert r.status == 200, await r.text()
            assert (await r.json())["results"][0]["stored"] is True
            row = await conn.fetchrow(
                "SELECT status, app_version, network, extra FROM device_heartbeats"
                " WHERE device_id = 'sqli-dev' AND ts = $1",
                ts,
            )
            assert {**row, "extra": json.loads(row["extra"])} == {
                "status": evil,
                "app_version": evil,
                "network": evil,
                "extra": {evil: evil},
            }

            # APK download: build_id is stored, outcome is an enumeration
            r = await api.client.post(
                "/v1/apk-downloads", json={"build_id": evil, "outcome": "started"}, headers=device
            )
            assert r.status == 201, await r.text()
            event_id = (await r.json())["id"]
            stored = await conn.fetchval("SELECT build_id FROM apk_download_events WHERE id = $1", event_id)
            assert stored == evil
            r = await api.client.post(
                "/v1/apk-downloads", json={"build_id": "b", "outcome": evil}, headers=device
            )
            assert r.status == 422 and (await r.json())["error"]["field"] == "outcome"

            # enrollment token: note is stored, scope is an enumeration
            r = await api.client.post("/v1/enrollment-tokens", json={"note": evil}, headers=api.op())
            assert r.status == 201, await r.text()
            token = await r.json()
            assert (
                await conn.fetchval("SELECT note FROM enrollment_tokens WHERE id = $1", token["id"]) == evil
            )
            r = await api.client.post("/v1/enrollment-tokens", json={"scope": evil}, headers=api.op())
            assert r.status == 422 and (await r.json())["error"]["field"] == "scope"

            # enrollment: the token is only ever hashed; the device id must be an identifier
            api.app[SERVICES].enrollment_throttle = FailureThrottle()  # this test is not about throttling
            r = await api.client.post("/v1/enroll", json={"enrollment_token": evil, "device_id": f"d{i}"})
            assert r.status == 401, await r.text()
            r = await api.client.post(
                "/v1/enroll", json={"enrollment_token": token["token"], "device_id": evil}
            )
            assert r.status == 422 and (await r.json())["error"]["field"] == "device_id"

            # dispatch: action and payload are stored; request_id and device_id are identifiers
            request_id = f"sqli-{i}"
            body = {
                "request_id": request_id,
                "device_id": "sqli-dev",
                "action": evil,
                "payload": {evil: [evil]},
            }
            r = await api.client.post("/v1/dispatches", json=body, headers=api.op())
            assert r.status == 201, await r.text()
            row = await conn.fetchrow(
                "SELECT action, payload FROM fcm_dispatches WHERE request_id = $1", request_id
            )
            assert (row["action"], json.loads(row["payload"])) == (evil, {evil: [evil]})
            r = await api.client.get(f"/v1/dispatches/{request_id}", headers=api.op())
            assert (await r.json())["action"] == evil
            for field in ("request_id", "device_id"):
                r = await api.client.post("/v1/dispatches", json={**body, field: evil}, headers=api.op())
                assert r.status == 422 and (await r.json())["error"]["field"] == field

        # read back through the API too
        r = await api.client.get("/v1/devices/sqli-dev/heartbeats?limit=1000", headers=api.op())
        assert sorted(h["status"] for h in (await r.json())["heartbeats"]) == sorted(INJECTIONS)
        n = len(INJECTIONS)
        assert await conn.fetchval("SELECT count(*) FROM device_heartbeats") == n
        assert await conn.fetchval("SELECT count(*) FROM apk_download_events") == n
        assert await conn.fetchval("SELECT count(*) FROM fcm_dispatches") == n
        assert await conn.fetchval("SELECT count(*) FROM devices") == 1
        assert await conn.fetchval("SELECT count(*) FROM enrollment_tokens") == n + 1
    finally:
        await conn.close()
    await tables_intact(api)


@pytest.mark.parametrize(
    "path", ["/v1/devices/a%00b", "/v1/devices/a%00b/heartbeats", "/v1/devices/a%00b/revoke"]
)
async def test_nul_in_a_device_id_path_is_not_found(api: Api, mode: StorageMode, path: str) -> None:
    method = "POST" if path.endswith("/revoke") else "GET"
    r = await api.client.request(method, path, headers=api.op())
    assert r.status == 404 and (await r.json())["error"]["field"] == "device_id"


async def test_nul_in_a_request_id_path_is_not_found(api: Api, mode: StorageMode) -> None:
    r = await api.client.get("/v1/dispatches/a%00b", headers=api.op())
    assert r.status == 404
