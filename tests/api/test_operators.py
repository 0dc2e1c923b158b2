"""Operators in users/sessions: roles from the route table (a viewer reads every GET and gets
403 on every write), expired and revoked tokens answered like unknown ones, and the
`telemetry admin` verbs that create, list, revoke and rotate operators."""

from __future__ import annotations

import asyncio
import re
from datetime import timedelta

import asyncpg
import pytest

from service.admin import create_operator
from service.api.routes import ENDPOINTS
from service.api.state import SERVICES
from service.cli import main
from tests.support.app import Api

SAME_REQUEST_ID = {"X-Request-ID": "operator-test"}  # so responses can be compared byte for byte


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **SAME_REQUEST_ID}


def concrete(path: str) -> str:
    return (
        path.replace("{device_id}", "dev-v")
        .replace("{request_id}", "req-v")
        .replace("{token_id}", "1")
        .replace("{build_id}", "build-v")
        .replace("{webhook_id}", "1")
        .replace("{bulk_id}", "1")
    )


async def new_operator(api: Api, name: str, **kwargs: object) -> str:
    conn = await asyncpg.connect(api.db_url)
    try:
        return await create_operator(conn, name, **kwargs)  # type: ignore[arg-type]
    finally:
        await conn.close()


async def sql(api: Api, statement: str, *args: object) -> None:
    conn = await asyncpg.connect(api.db_url)
    try:
        await conn.execute(statement, *args)
    finally:
        await conn.close()


async def cli(monkeypatch: pytest.MonkeyPatch, api: Api, *argv: str) -> int:
    monkeypatch.setenv("DATABASE_URL", api.db_url)
    return await asyncio.to_thread(main, ["admin", *argv])


def test_the_route_table_gives_reads_to_viewers_and_writes_to_admins() -> None:
    operator_endpoints = [ep for ep in ENDPOINTS if ep.auth in ("viewer", "admin")]
    assert operator_endpoints
    # The one read kept from viewers: the audit log says who did what.
    admin_reads = {("GET", "/v1/audit")}
    for ep in operator_endpoints:
        read = ep.method == "GET" and (ep.method, ep.path) not in admin_reads
        assert (ep.auth == "viewer") == read, (ep.method, ep.path)


async def test_a_viewer_reads_every_get_and_is_refused_every_write(api: Api) -> None:
    await api.enroll("dev-v")
    r = await api.client.post(
        "/v1/dispatches",
        json={"request_id": "req-v", "device_id": "dev-v", "action": "ping"},
        headers=api.op(),
    )
    assert r.status == 201
    build = {
        "package_name": "com.example.v",
        "version_code": 1,
        "version_name": "1.0",
        "build_id": "build-v",
        "sha256": "0" * 64,
        "size_bytes": 1,
    }
    assert (await api.client.post("/v1/apk-versions", json=build, headers=api.op())).status == 201
    hook = {"url": "https://93.184.215.14/hook"}  # a public address literal: nothing is sent to it
    assert (await api.client.post("/v1/webhooks", json=hook, headers=api.op())).status == 201
    bulk = {"request_id": "bulk-v", "action": "ping", "selector": {"device_ids": ["dev-v"]}}
    r = await api.client.post("/v1/dispatches/bulk", json=bulk, headers=api.op())
    assert r.status == 202 and (await r.json())["id"] == 1
    viewer = await new_operator(api, "val", role="viewer")
    writes = [ep for ep in ENDPOINTS if ep.auth in ("admin", "ci")]
    reads = [ep for ep in ENDPOINTS if ep.auth == "viewer"]
    assert len(writes) >= 5 and len(reads) >= 4
    for ep in writes:
        r = await api.client.request(ep.method, concrete(ep.path), json={}, headers=bearer(viewer))
        assert r.status == 403, (ep.method, ep.path)
        assert (await r.json())["error"]["code"] == "forbidden"
    for ep in reads:
        r = await api.client.request(ep.method, concrete(ep.path), headers=bearer(viewer))
        assert r.status == 200, (ep.method, ep.path, await r.text())
    # nothing was written by the viewer's attempts
    assert await api.count("SELECT count(*) FROM enrollment_tokens") == 1
    assert await api.count("SELECT count(*) FROM devices WHERE banned_at IS NOT NULL") == 0
    # an admin may do both
    r = await api.client.post("/v1/devices/dev-v/revoke", headers=api.op())
    assert r.status == 200


async def test_expired_revoked_and_disabled_operator_tokens_get_the_bytes_of_an_unknown_one(api: Api) -> None:
    expired = await new_operator(api, "exp", expires_in=timedelta(minutes=1))
    revoked = await new_operator(api, "rev")
    disabled = await new_operator(api, "dis")
    await sql(
        api,
        "UPDATE sessions SET expires_at = now() - interval '1 s' WHERE user_id ="
        " (SELECT id FROM users WHERE username = 'exp')",
    )
    await sql(
        api,
        "UPDATE sessions SET revoked_at = now()"
        " WHERE user_id = (SELECT id FROM users WHERE username = 'rev')",
    )
    await sql(api, "UPDATE users SET disabled_at = now() WHERE username = 'dis'")
    answers = {}
    for name, token in {
        "unknown": "op_" + "A" * 43,
        "expired": expired,
        "revoked": revoked,
        "disabled": disabled,
    }.items():
        for method, path in (("GET", "/v1/devices/x"), ("POST", "/v1/enrollment-tokens")):
            r = await api.client.request(method, path, json={}, headers=bearer(token))
            headers = {k: v for k, v in r.headers.items() if k.lower() not in ("date", "server")}
            answers[name, method] = (r.status, await r.read(), sorted(headers.items()))
    assert {status for status, _, _ in answers.values()} == {401}
    assert len({repr(answer) for answer in answers.values()}) == 1, answers


async def test_an_operator_token_is_not_cached_past_its_expiry(api: Api) -> None:
    token = await new_operator(api, "short", expires_in=timedelta(minutes=1))
    assert (await api.client.get("/v1/devices/x", headers=bearer(token))).status == 404  # now cached
    await sql(api, "UPDATE sessions SET expires_at = now() + interval '300 ms'")
    api.app[SERVICES].auth.cache.clear()
    assert (await api.client.get("/v1/devices/x", headers=bearer(token))).status == 404
    await asyncio.sleep(0.5)
    assert (await api.client.get("/v1/devices/x", headers=bearer(token))).status == 401


async def test_create_operator_with_a_role_and_rotate_it(
    api: Api, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    api.app[SERVICES].auth.cache_ttl = 0.2
    assert (
        await cli(monkeypatch, api, "create-operator", "vic", "--role", "viewer", "--expires-in", "30d") == 0
    )
    old = capsys.readouterr().out.strip()
    assert old.startswith("op_")
    assert (await api.client.get("/v1/devices/x", headers=bearer(old))).status == 404
    assert (await api.client.post("/v1/enrollment-tokens", json={}, headers=bearer(old))).status == 403
    assert (
        await api.count(
            "SELECT count(*) FROM sessions s JOIN users u ON u.id = s.user_id WHERE u.username = 'vic'"
            " AND u.role = 'viewer'"
            " AND s.expires_at BETWEEN now() + interval '29 days' AND now() + interval '31 days'"
        )
        == 1
    )

    assert await cli(monkeypatch, api, "rotate-operator", "vic") == 0
    new = capsys.readouterr().out.strip()
    assert new.startswith("op_") and new != old
    await asyncio.sleep(0.3)  # the running service's cache TTL
    assert (await api.client.get("/v1/devices/x", headers=bearer(old))).status == 401
    assert (await api.client.get("/v1/devices/x", headers=bearer(new))).status == 404
    # the new token keeps the role and the lifetime of the old one
    assert (
        await api.count(
            "SELECT count(*) FROM sessions s JOIN users u ON u.id = s.user_id WHERE u.username = 'vic'"
            " AND s.revoked_at IS NULL AND s.expires_at > now() + interval '29 days'"
        )
        == 1
    )
    assert (await api.client.post("/v1/enrollment-tokens", json={}, headers=bearer(new))).status == 403


async def test_revoke_operator_and_list_operators(
    api: Api, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    api.app[SERVICES].auth.cache_ttl = 0.2
    bob = await new_operator(api, "bob", role="viewer", expires_in=timedelta(days=30))
    carol = await new_operator(api, "carol")
    assert (await api.client.get("/v1/devices/x", headers=bearer(carol))).status == 404
    assert await cli(monkeypatch, api, "revoke-operator", "carol") == 0
    await asyncio.sleep(0.3)
    assert (await api.client.get("/v1/devices/x", headers=bearer(carol))).status == 401
    assert (await api.client.get("/v1/devices/x", headers=bearer(bob))).status == 404
    capsys.readouterr()

    assert await cli(monkeypatch, api, "list-operators") == 0
    lines = capsys.readouterr().out.splitlines()
    assert re.split(r"\s{2,}", lines[0]) == ["NAME", "ROLE", "STATUS", "TOKENS", "EXPIRES", "LAST USED"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert set(rows) == {"alice", "bob", "carol"}
    assert rows["alice"][1:4] == ["admin", "active", "1"]
    assert rows["bob"][1:4] == ["viewer", "active", "1"] and rows["bob"][4].startswith("20")
    assert rows["bob"][5] != "-"  # bob was used above
    assert rows["carol"][1:5] == ["admin", "revoked", "0", "-"]
    assert bob not in "\n".join(lines)  # tokens are never listed

    # a revoked operator cannot be rotated back to life; unknown names exit 2
    assert await cli(monkeypatch, api, "rotate-operator", "carol") == 2
    assert await cli(monkeypatch, api, "revoke-operator", "nobody") == 2
    assert await cli(monkeypatch, api, "create-operator", "bob") == 2
    assert await cli(monkeypatch, api, "create-operator", "eve", "--expires-in", "10s") == 2
    assert "eve" not in capsys.readouterr().out
    assert await api.count("SELECT count(*) FROM users WHERE username = 'eve'") == 0


async def test_create_enrollment_token_bound_to_a_device_id_from_the_cli(
    api: Api, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await cli(monkeypatch, api, "create-enrollment-token", "--device-id", "phone-9") == 0
    token = capsys.readouterr().out.strip()
    assert await api.count("SELECT count(*) FROM enrollment_tokens WHERE device_id = 'phone-9'") == 1
    r = await api.client.post("/v1/enroll", json={"enrollment_token": token, "device_id": "phone-8"})
    assert r.status == 401
    r = await api.client.post("/v1/enroll", json={"enrollment_token": token, "device_id": "phone-9"})
    assert r.status == 201
    assert await cli(monkeypatch, api, "create-enrollment-token", "--device-id", "bad id") == 2
