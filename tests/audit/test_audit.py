"""Who did what: every operator write through the API (walked from the endpoint table, so a new
write without its audit row fails here) and through the CLI leaves one `operator_audit` row, in
the write's own transaction; admins read them back newest first by keyset."""

from __future__ import annotations

import asyncio
import os
import pwd
from dataclasses import replace
from datetime import timedelta
from typing import Any

import asyncpg
import pytest

from service.api.routes import ENDPOINTS
from service.audit.log import AuditAction
from service.cli import main
from service.db.retained import OPERATOR_AUDIT
from service.retention.audit import expire
from service.settings import StorageMode
from tests.api.test_operators import bearer, new_operator
from tests.support.app import Api
from tests.support.cluster import settings_for

BUILD = {
    "package_name": "com.example.audit",
    "version_code": 7,
    "version_name": "1.7",
    "build_id": "build-a",
    "sha256": "0" * 64,
    "size_bytes": 1,
}


@pytest.fixture
def app_settings(db_url: str, mode: StorageMode) -> Any:
    # The ping of `POST /v1/webhooks/{id}/test` goes to a closed local port: answered at once.
    return replace(settings_for(db_url, mode), webhook_allow_private=True)


async def rows(api: Api, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(api.db_url)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


async def audit_of(api: Api, request_id: str) -> list[dict[str, Any]]:
    found = await rows(
        api,
        "SELECT operator, action, target, request_id, client_address, details::text AS details"
        " FROM operator_audit WHERE request_id = $1 ORDER BY id",
        request_id,
    )
    return [dict(r) for r in found]


def cli_operator() -> str:
    return f"cli:{pwd.getpwuid(os.getuid()).pw_name}"


async def test_every_operator_write_of_the_endpoint_table_records_who_did_what(api: Api) -> None:
    await api.enroll("dev-a")
    await api.enroll("dev-b")
    hook = await api.client.post("/v1/webhooks", json={"url": "http://127.0.0.1:1/hook"}, headers=api.op())
    assert hook.status == 201, await hook.text()
    hook_id = (await hook.json())["id"]
    token_id = (await api.mint())["id"]
    r = await api.client.post(
        "/v1/dispatches",
        json={"request_id": "cmd-c", "device_id": "dev-a", "action": "lock"},
        headers=api.op(),
    )
    assert r.status == 201
    # Per write endpoint: a request that succeeds, and the action and target it must record.
    # Ordered where one needs another's effect (the revoke before the reinstate).
    scenarios: dict[tuple[str, str], tuple[str, Any, AuditAction, str]] = {
        ("POST", "/v1/enrollment-tokens"): (
            "/v1/enrollment-tokens",
            {"max_uses": 2},
            AuditAction.ENROLLMENT_TOKEN_CREATE,
            "enrollment_token:",
        ),
        ("DELETE", "/v1/enrollment-tokens/{token_id}"): (
            f"/v1/enrollment-tokens/{token_id}",
            None,
            AuditAction.ENROLLMENT_TOKEN_REVOKE,
            f"enrollment_token:{token_id}",
        ),
        ("POST", "/v1/dispatches"): (
            "/v1/dispatches",
            {"request_id": "cmd-d", "device_id": "dev-a", "action": "wipe"},
            AuditAction.DISPATCH_CREATE,
            "command:cmd-d",
        ),
        ("POST", "/v1/dispatches/bulk"): (
            "/v1/dispatches/bulk",
            {"request_id": "bulk-a", "action": "lock", "selector": {"device_ids": ["dev-a"]}},
            AuditAction.BULK_CREATE,
            "bulk:1",
        ),
        ("POST", "/v1/dispatches/bulk/{bulk_id}/cancel"): (
            "/v1/dispatches/bulk/1/cancel",
            None,
            AuditAction.BULK_CANCEL,
            "bulk:1",
        ),
        ("POST", "/v1/commands/{request_id}/cancel"): (
            "/v1/commands/cmd-c/cancel",
            None,
            AuditAction.COMMAND_CANCEL,
            "command:cmd-c",
        ),
        ("POST", "/v1/apk-versions"): (
            "/v1/apk-versions",
            BUILD,
            AuditAction.APK_VERSION_REGISTER,
            "apk_version:build-a",
        ),
        ("POST", "/v1/webhooks"): (
            "/v1/webhooks",
            {"url": "http://127.0.0.1:1/other"},
            AuditAction.WEBHOOK_CREATE,
            "webhook:",
        ),
        ("PATCH", "/v1/webhooks/{webhook_id}"): (
            f"/v1/webhooks/{hook_id}",
            {"enabled": False},
            AuditAction.WEBHOOK_UPDATE,
            f"webhook:{hook_id}",
        ),
        ("POST", "/v1/webhooks/{webhook_id}/test"): (
            f"/v1/webhooks/{hook_id}/test",
            None,
            AuditAction.WEBHOOK_TEST,
            f"webhook:{hook_id}",
        ),
        ("POST", "/v1/webhooks/{webhook_id}/replay"): (
            f"/v1/webhooks/{hook_id}/replay",
            {"from_event_id": 1},
            AuditAction.WEBHOOK_REPLAY,
            f"webhook:{hook_id}",
        ),
        ("PUT", "/v1/devices/{device_id}/tags"): (
            "/v1/devices/dev-b/tags",
            {"tags": ["kiosk"]},
            AuditAction.DEVICE_TAGS_SET,
            "device:dev-b",
        ),
        ("POST", "/v1/devices/{device_id}/revoke"): (
            "/v1/devices/dev-b/revoke",
            None,
            AuditAction.DEVICE_REVOKE,
            "device:dev-b",
        ),
        ("POST", "/v1/devices/{device_id}/reinstate"): (
            "/v1/devices/dev-b/reinstate",
            None,
            AuditAction.DEVICE_REINSTATE,
            "device:dev-b",
        ),
        ("DELETE", "/v1/webhooks/{webhook_id}"): (
            f"/v1/webhooks/{hook_id}",
            None,
            AuditAction.WEBHOOK_DELETE,
            f"webhook:{hook_id}",
        ),
    }
    writes = {(ep.method, ep.path) for ep in ENDPOINTS if ep.auth in ("admin", "ci") and ep.method != "GET"}
    assert writes == set(scenarios), "a write endpoint without its audit scenario (or a stale one)"
    for i, ((method, _), (path, body, action, target)) in enumerate(scenarios.items()):
        rid = f"audit-{i}"
        headers = {**api.op(), "X-Request-ID": rid, "X-Forwarded-For": "203.0.113.9"}
        r = await api.client.request(method, path, json=body, headers=headers)
        assert 200 <= r.status < 300, (method, path, r.status, await r.text())
        (entry,) = await audit_of(api, rid)
        assert entry["operator"] == "alice" and entry["action"] == action.value, (path, entry)
        prefix_only = target.endswith(":")  # an id the server chose
        assert entry["target"].startswith(target) if prefix_only else entry["target"] == target, entry
        # No trusted proxy is configured: the connecting address is the client, never the header.
        assert entry["client_address"] == "127.0.0.1", entry


async def test_a_write_that_fails_records_nothing_and_one_that_repeats_records_again(api: Api) -> None:
    await api.enroll("dev-a")
    for method, path, body in (
        ("POST", "/v1/devices/nobody/revoke", None),
        ("PUT", "/v1/devices/nobody/tags", {"tags": ["a"]}),
        ("PUT", "/v1/devices/dev-a/tags", {"tags": ["bad tag"]}),
        ("POST", "/v1/commands/nothing/cancel", None),
        ("DELETE", "/v1/webhooks/999", None),
        ("DELETE", "/v1/enrollment-tokens/999", None),
    ):
        r = await api.client.request(method, path, json=body, headers={**api.op(), "X-Request-ID": "failing"})
        assert r.status in (404, 422), (path, r.status)
    assert await audit_of(api, "failing") == []
    assert await api.count("SELECT count(*) FROM operator_audit") == 1  # the enrollment token of enroll()
    for n in range(2):
        r = await api.client.put(
            "/v1/devices/dev-a/tags", json={"tags": ["x"]}, headers={**api.op(), "X-Request-ID": f"tag-{n}"}
        )
        assert r.status == 200
    (first,) = await audit_of(api, "tag-0")
    (again,) = await audit_of(api, "tag-1")
    assert '"changed": true' in first["details"] and '"changed": false' in again["details"]


async def test_the_audit_read_filters_pages_by_keyset_and_is_for_admins_only(api: Api) -> None:
    for i in range(5):
        await api.enroll(f"dev-{i}")
        r = await api.client.put(f"/v1/devices/dev-{i}/tags", json={"tags": [f"t{i}"]}, headers=api.op())
        assert r.status == 200
    bob = await new_operator(api, "bob")
    r = await api.client.post("/v1/devices/dev-0/revoke", headers=bearer(bob))
    assert r.status == 200
    r = await api.client.get("/v1/audit?action=device.tags_set&limit=2", headers=api.op())
    page = await r.json()
    assert r.status == 200 and [e["target"] for e in page["entries"]] == ["device:dev-4", "device:dev-3"]
    seen = [e["target"] for e in page["entries"]]
    while page["next_before"] is not None:
        r = await api.client.get(
            "/v1/audit",
            params={"action": "device.tags_set", "limit": "2", "before": page["next_before"]},
            headers=api.op(),
        )
        page = await r.json()
        seen += [e["target"] for e in page["entries"]]
    assert seen == [f"device:dev-{i}" for i in (4, 3, 2, 1, 0)]
    r = await api.client.get("/v1/audit?operator=bob", headers=api.op())
    (entry,) = (await r.json())["entries"]
    assert entry["action"] == "device.revoke" and entry["target"] == "device:dev-0"
    assert entry["details"] == {"changed": True} and entry["request_id"]
    r = await api.client.get("/v1/audit?target=device:dev-0", headers=api.op())
    assert [e["action"] for e in (await r.json())["entries"]] == ["device.revoke", "device.tags_set"]
    for bad, field in (("action=device.delete", "action"), ("before=0", "before"), ("limit=0", "limit")):
        r = await api.client.get(f"/v1/audit?{bad}", headers=api.op())
        assert r.status == 422 and (await r.json())["error"]["field"] == field, bad
    viewer = await new_operator(api, "val", role="viewer")
    r = await api.client.get("/v1/audit", headers=bearer(viewer))
    assert r.status == 403


async def test_command_reads_name_the_operator_who_dispatched_them(api: Api) -> None:
    token = await api.enroll("dev-a")
    r = await api.client.post(
        "/v1/dispatches", json={"request_id": "who", "device_id": "dev-a", "action": "lock"}, headers=api.op()
    )
    assert r.status == 201
    r = await api.client.get("/v1/commands/who", headers=api.op())
    assert (await r.json())["created_by"] == "alice"
    r = await api.client.post(
        "/v1/dispatches/who/ack", json={"status": "delivered"}, headers={"Authorization": f"Bearer {token}"}
    )
    assert (await r.json())["command"]["created_by"] == "alice"
    r = await api.client.get("/v1/devices/dev-a/commands", headers=api.op())
    assert [c["created_by"] for c in (await r.json())["commands"]] == ["alice"]


async def test_the_cli_admin_verbs_and_retention_set_are_recorded(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", api.db_url)
    argvs = (
        ["admin", "create-operator", "carol", "--role", "viewer"],
        ["admin", "rotate-operator", "carol"],
        ["admin", "revoke-operator", "carol"],
        ["admin", "create-enrollment-token", "--device-id", "dev-z"],
        ["retention", "set", "operator_audit", "500d"],
        ["admin", "list-operators"],  # a read: no entry
    )
    for argv in argvs:
        assert await asyncio.to_thread(main, argv) == 0, argv
    found = await rows(
        api,
        "SELECT operator, action, target, request_id FROM operator_audit"
        " WHERE operator LIKE 'cli:%' ORDER BY id",
    )
    assert [(r["action"], r["target"]) for r in found] == [
        ("operator.create", "operator:carol"),
        ("operator.rotate", "operator:carol"),
        ("operator.revoke", "operator:carol"),
        ("enrollment_token.create", found[3]["target"]),
        ("retention.set", "retention:operator_audit"),
    ]
    assert found[3]["target"].startswith("enrollment_token:")
    assert {r["operator"] for r in found} == {cli_operator()} and {r["request_id"] for r in found} == {None}
    window = await rows(api, "SELECT drop_after FROM retention_policies WHERE table_name = 'operator_audit'")
    assert window[0]["drop_after"] == timedelta(days=500)


async def test_entries_are_kept_their_400_days_then_expired(api: Api) -> None:
    await api.enroll("dev-a")  # one fresh entry (its enrollment token)
    conn = await asyncpg.connect(api.db_url)
    try:
        await conn.execute(
            "INSERT INTO operator_audit (at, operator, action, target) VALUES"
            " (now() - interval '401 days', 'old', 'device.revoke', 'device:x'),"
            " (now() - interval '399 days', 'kept', 'device.revoke', 'device:x')"
        )
        result = await expire(conn, OPERATOR_AUDIT)
        assert result.error is None and result.window == timedelta(days=400) and result.deleted == 1
        left = {r["operator"] for r in await conn.fetch("SELECT operator FROM operator_audit")}
    finally:
        await conn.close()
    assert left == {"kept", "alice"}
