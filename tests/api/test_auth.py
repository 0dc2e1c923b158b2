"""Devices write only as themselves; operator endpoints need an operator; bad credentials → 401/403."""

from __future__ import annotations

import asyncpg
import pytest

from tests.support.app import Api


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_device_id_comes_from_the_credential_never_the_body(api: Api) -> None:
    token_a = await api.enroll("dev-a")
    await api.enroll("dev-b")
    r = await api.client.post(
        "/v1/heartbeats",
        json={"status": "ok", "battery_pct": 5, "device_id": "dev-b"},
        headers=bearer(token_a),
    )
    assert r.status == 422
    assert (await r.json())["error"]["field"] == "device_id"
    r = await api.client.post(
        "/v1/heartbeats", json={"status": "ok", "battery_pct": 5}, headers=bearer(token_a)
    )
    assert (await r.json())["device_id"] == "dev-a"
    assert await api.count("SELECT count(*) FROM device_heartbeats WHERE device_id = 'dev-b'") == 0


async def test_device_credentials_are_refused_on_operator_endpoints(api: Api) -> None:
    token_a = await api.enroll("dev-a")
    for method, path, body in [
        ("GET", "/v1/devices/dev-b/heartbeats", None),
        ("GET", "/v1/devices/dev-a/heartbeats", None),
        ("GET", "/v1/devices/dev-a", None),
        ("POST", "/v1/dispatches", {"request_id": "x", "device_id": "dev-a", "action": "ping"}),
        ("POST", "/v1/enrollment-tokens", {}),
        ("GET", "/v1/dispatches/x", None),
    ]:
        r = await api.client.request(method, path, json=body, headers=bearer(token_a))
        assert r.status == 403, (method, path)
        assert (await r.json())["error"]["code"] == "forbidden"


async def test_operator_credentials_are_refused_on_device_endpoints(api: Api) -> None:
    r = await api.client.post("/v1/heartbeats", json={"status": "ok", "battery_pct": 5}, headers=api.op())
    assert r.status == 403


@pytest.mark.parametrize(
    "header",
    [None, "", "Bearer", "Bearer ", "Basic abc", "Bearer dev_unknown", "Bearer op_unknown", "Bearer garbage"],
)
async def test_missing_or_wrong_credentials_get_401(api: Api, header: str | None) -> None:
    headers = {"Authorization": header} if header is not None else {}
    r = await api.client.post("/v1/heartbeats", json={"status": "ok", "battery_pct": 5}, headers=headers)
    assert r.status == 401
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    r = await api.client.get("/v1/devices/x", headers=headers)
    assert r.status == 401


async def test_revoked_device_credential_gets_401(api: Api) -> None:
    token = await api.enroll("dev-r")
    assert (
        await api.client.post(
            "/v1/heartbeats", json={"status": "ok", "battery_pct": 5}, headers=bearer(token)
        )
    ).status == 200
    r = await api.client.post("/v1/devices/dev-r/revoke", headers=api.op())
    assert r.status == 200
    r = await api.client.post(
        "/v1/heartbeats", json={"status": "ok", "battery_pct": 5}, headers=bearer(token)
    )
    assert r.status == 401


async def test_revoked_or_expired_operator_token_gets_401(api: Api) -> None:
    conn = await asyncpg.connect(api.db_url)
    try:
        await conn.execute("UPDATE sessions SET expires_at = now() - interval '1 second'")
    finally:
        await conn.close()
    r = await api.client.get("/v1/devices/x", headers=api.op())
    assert r.status == 401


async def test_unknown_expired_revoked_and_used_up_enrollment_tokens_get_the_same_bytes(api: Api) -> None:
    used_up, expired, revoked = [await api.mint(), await api.mint(), await api.mint()]
    bound_elsewhere = await api.mint(device_id="someone-else")
    assert (
        await api.client.post("/v1/enroll", json={"enrollment_token": used_up["token"], "device_id": "first"})
    ).status == 201
    conn = await asyncpg.connect(api.db_url)
    try:
        await conn.execute(
            "UPDATE enrollment_tokens SET expires_at = now() - interval '1 s' WHERE id = $1", expired["id"]
        )
    finally:
        await conn.close()
    assert (await api.client.delete(f"/v1/enrollment-tokens/{revoked['id']}", headers=api.op())).status == 200
    candidates = {
        "used up": used_up["token"],
        "expired": expired["token"],
        "revoked": revoked["token"],
        "bound to another device id": bound_elsewhere["token"],
        "never issued": "enr_" + "A" * 43,
        "no prefix": used_up["token"][4:],
        "operator token": api.operator_token,
        "longest allowed": "x" * 256,
    }
    answers = {}
    for name, token in candidates.items():
        # the same request id for each, since every answer carries it (header and body)
        r = await api.client.post(
            "/v1/enroll",
            json={"enrollment_token": token, "device_id": "second"},
            headers={"X-Request-ID": "same-for-all"},
        )
        headers = {k: v for k, v in r.headers.items() if k.lower() not in ("date", "server")}
        answers[name] = (r.status, await r.read(), sorted(headers.items()))
    assert len(set(map(repr, answers.values()))) == 1, answers
    assert answers["expired"][0] == 401
    assert await api.count("SELECT count(*) FROM devices WHERE id = 'second'") == 0
    assert await api.count("SELECT sum(use_count) FROM enrollment_tokens") == 1
    assert await api.count("SELECT use_count FROM enrollment_tokens WHERE id = $1", used_up["id"]) == 1
    # refusals from one address are one row with a count, not one row per attempt
    assert await api.count("SELECT count(*) FROM enrollment_events WHERE outcome = 'refused'") == 1
    assert await api.count("SELECT attempts FROM enrollment_events WHERE outcome = 'refused'") == len(
        candidates
    )


async def test_enrollment_token_use_limit_holds_under_concurrency(api: Api) -> None:
    import asyncio

    r = await api.client.post("/v1/enrollment-tokens", json={"max_uses": 3}, headers=api.op())
    token = (await r.json())["token"]
    responses = await asyncio.gather(
        *(
            api.client.post("/v1/enroll", json={"enrollment_token": token, "device_id": f"c{i}"})
            for i in range(8)
        )
    )
    assert sorted(r.status for r in responses).count(201) == 3
    assert await api.count("SELECT count(*) FROM devices") == 3


async def test_an_enrolled_device_id_cannot_be_taken_over(api: Api) -> None:
    await api.enroll("dev-t")
    token = (await api.mint())["token"]
    r = await api.client.post("/v1/enroll", json={"enrollment_token": token, "device_id": "dev-t"})
    assert r.status == 409 and (await r.json())["error"]["code"] == "already_enrolled"
    # the refused attempt did not spend the token: it still enrolls a new id
    r = await api.client.post("/v1/enroll", json={"enrollment_token": token, "device_id": "dev-u"})
    assert r.status == 201


async def test_repeated_failed_enrollments_are_throttled(api: Api) -> None:
    statuses = []
    for _ in range(12):
        r = await api.client.post("/v1/enroll", json={"enrollment_token": "enr_guess", "device_id": "g"})
        statuses.append(r.status)
    assert statuses[:10] == [401] * 10
    assert statuses[10:] == [429, 429]
    assert int(r.headers["Retry-After"]) >= 1
