"""`PUT /v1/device/push-token`: a device reports its own FCM registration token; FCM's
UNREGISTERED marks it invalid until the device reports a new one."""

from __future__ import annotations

import secrets

import asyncpg

from service.admin import create_operator
from service.push.tokens import is_plausible_token, mark_unregistered, push_target
from tests.support.app import Api

PATH = "/v1/device/push-token"


def fcm_token() -> str:
    """Shaped like a real one: instance id, colon, APA91b part (about 160 characters)."""
    return f"{secrets.token_urlsafe(16)}:APA91b{secrets.token_urlsafe(105)}"


def dev(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def put(api: Api, credential: str, token: object) -> tuple[int, dict]:
    r = await api.client.put(PATH, json={"token": token}, headers=dev(credential))
    return r.status, await r.json()


async def stored(api: Api) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(api.db_url)
    try:
        return await conn.fetch("SELECT * FROM device_push_tokens ORDER BY device_id")
    finally:
        await conn.close()


async def test_a_device_reports_its_token_and_a_repeat_changes_only_reported_at(api: Api) -> None:
    credential = await api.enroll("phone-1")
    token = fcm_token()
    status, first = await put(api, credential, token)
    assert status == 200, first
    assert first["device_id"] == "phone-1" and first["changed"] is True and first["invalid_at"] is None
    status, again = await put(api, credential, token)
    assert status == 200 and again["changed"] is False
    assert again["changed_at"] == first["changed_at"] and again["reported_at"] > first["reported_at"]
    (row,) = await stored(api)
    assert (row["device_id"], row["token"]) == ("phone-1", token)


async def test_a_new_token_replaces_the_old_and_moves_changed_at(api: Api) -> None:
    credential = await api.enroll("phone-1")
    _, first = await put(api, credential, fcm_token())
    new = fcm_token()
    status, second = await put(api, credential, new)
    assert status == 200 and second["changed"] is True and second["changed_at"] > first["changed_at"]
    (row,) = await stored(api)
    assert row["token"] == new


async def test_unregistered_invalidates_the_token_until_the_device_reports_a_new_one(api: Api) -> None:
    credential = await api.enroll("phone-1")
    old = fcm_token()
    await put(api, credential, old)
    pool = await asyncpg.create_pool(api.db_url, min_size=1, max_size=2)
    try:
        assert await push_target(pool, "phone-1") == old
        assert await mark_unregistered(pool, "phone-1", old) is True
        assert await mark_unregistered(pool, "phone-1", old) is False  # already invalid
        assert await push_target(pool, "phone-1") is None
        # The same token again is still the dead one.
        status, same = await put(api, credential, old)
        assert status == 200 and same["changed"] is False and same["invalid_at"] is not None
        assert await push_target(pool, "phone-1") is None
        new = fcm_token()
        status, fresh = await put(api, credential, new)
        assert status == 200 and fresh["changed"] is True and fresh["invalid_at"] is None
        assert await push_target(pool, "phone-1") == new
        (row,) = await stored(api)
        assert row["invalid_reason"] is None
    finally:
        await pool.close()


async def test_an_unregistered_answer_for_a_replaced_token_leaves_the_new_one_valid(api: Api) -> None:
    credential = await api.enroll("phone-1")
    old, new = fcm_token(), fcm_token()
    await put(api, credential, old)
    await put(api, credential, new)  # reported while the push to `old` was in flight
    conn = await asyncpg.connect(api.db_url)
    try:
        assert await mark_unregistered(conn, "phone-1", old) is False
        assert await push_target(conn, "phone-1") == new
    finally:
        await conn.close()


async def test_a_device_sets_only_its_own_token(api: Api) -> None:
    one, two = await api.enroll("phone-1"), await api.enroll("phone-2")
    t1, t2 = fcm_token(), fcm_token()
    await put(api, one, t1)
    await put(api, two, t2)
    rows = await stored(api)
    assert [(r["device_id"], r["token"]) for r in rows] == [("phone-1", t1), ("phone-2", t2)]
    # A body naming another device is refused, not obeyed.
    r = await api.client.put(PATH, json={"token": fcm_token(), "device_id": "phone-2"}, headers=dev(one))
    assert r.status == 422 and (await r.json())["error"]["field"] == "device_id"
    assert [(r["device_id"], r["token"]) for r in await stored(api)] == [("phone-1", t1), ("phone-2", t2)]


async def test_operators_and_strangers_cannot_set_a_token(api: Api) -> None:
    conn = await asyncpg.connect(api.db_url)
    try:
        viewer = await create_operator(conn, "carol", role="viewer")
    finally:
        await conn.close()
    for headers, expected in [(api.op(), 403), (dev(viewer), 403), ({}, 401), (dev("dev_not-a-token"), 401)]:
        r = await api.client.put(PATH, json={"token": fcm_token()}, headers=headers)
        assert r.status == expected, await r.text()
        assert "error" in await r.json()
    assert await stored(api) == []


async def test_a_revoked_device_cannot_set_its_token(api: Api) -> None:
    credential = await api.enroll("phone-1")
    r = await api.client.post("/v1/devices/phone-1/revoke", headers=api.op())
    assert r.status == 200, await r.text()
    status, body = await put(api, credential, fcm_token())
    assert status == 401 and body["error"]["code"]
    assert await stored(api) == []


async def test_an_implausible_token_is_a_422_naming_the_field(api: Api) -> None:
    credential = await api.enroll("phone-1")
    for bad in [
        "",
        "abc",
        "x" * 99,
        "has spaces " * 20,
        "a" * 1025,
        fcm_token() + "\n",
        12345,
        None,
        "é" * 150,
    ]:
        status, body = await put(api, credential, bad)
        assert status == 422, (bad, body)
        assert body["error"]["field"] == "token", body
    r = await api.client.put(PATH, json={}, headers=dev(credential))
    assert r.status == 422 and (await r.json())["error"]["field"] == "token"
    assert await stored(api) == []


async def test_the_endpoint_is_in_the_openapi_document(api: Api) -> None:
    doc = await (await api.client.get("/openapi.json")).json()
    put_op = doc["paths"][PATH]["put"]
    assert {"200", "401", "403", "422"} <= set(put_op["responses"])
    schema = doc["components"]["schemas"]["PushTokenReport"]["properties"]["token"]
    assert schema["minLength"] == 100 and schema["maxLength"] == 1024 and "pattern" in schema


def test_plausible_tokens_look_like_fcms():
    assert is_plausible_token(fcm_token())
    assert is_plausible_token("APA91b" + "A" * 146)  # an older GCM-style token, no colon part
    assert not is_plausible_token("a:b:" + "c" * 150)
    assert not is_plausible_token("token-" * 10)
