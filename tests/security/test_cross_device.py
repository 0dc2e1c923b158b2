"""Every device endpoint of commands and installs keeps a device to its own rows: another
device's command or install is answered as if it did not exist (404, never 403), nothing of it
changes, and nothing of it is listed."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.support.app import Api


def dev(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def setup(api: Api) -> tuple[str, str]:
    owner = await api.enroll("owner")
    stranger = await api.enroll("stranger")
    r = await api.client.post(
        "/v1/dispatches",
        json={"request_id": "owners-cmd", "device_id": "owner", "action": "wipe"},
        headers=api.op(),
    )
    assert r.status == 201
    return owner, stranger


async def command(api: Api) -> dict[str, Any]:
    r = await api.client.get("/v1/commands/owners-cmd", headers=api.op())
    return await r.json()


async def test_another_devices_ack_is_404_like_an_unknown_id_and_changes_nothing(api: Api) -> None:
    owner, stranger = await setup(api)
    before = await command(api)
    for status in ("delivered", "executed", "failed"):
        r = await api.client.post(
            "/v1/dispatches/owners-cmd/ack", json={"status": status}, headers=dev(stranger)
        )
        unknown = await api.client.post(
            "/v1/dispatches/no-such-cmd/ack", json={"status": status}, headers=dev(stranger)
        )
        assert r.status == unknown.status == 404
        body, other = await r.json(), await unknown.json()
        assert body["error"]["code"] == other["error"]["code"] == "not_found"
        # Word for word the answer to an id that does not exist.
        assert body["error"]["message"].replace("owners-cmd", "ID") == other["error"]["message"].replace(
            "no-such-cmd", "ID"
        )
    assert await command(api) == before
    r = await api.client.post(
        "/v1/dispatches/owners-cmd/ack", json={"status": "delivered"}, headers=dev(owner)
    )
    assert r.status == 200


async def test_pull_never_lists_another_devices_commands(api: Api) -> None:
    owner, stranger = await setup(api)
    r = await api.client.get("/v1/device/commands", headers=dev(stranger))
    assert r.status == 200 and (await r.json())["commands"] == []
    r = await api.client.get("/v1/device/commands", headers=dev(owner))
    assert [c["request_id"] for c in (await r.json())["commands"]] == ["owners-cmd"]


async def test_an_install_report_only_ever_touches_the_callers_own_row(api: Api) -> None:
    owner, stranger = await setup(api)
    build = {
        "package_name": "com.example.agent",
        "version_code": 1,
        "version_name": "1.0",
        "build_id": "b-1",
        "sha256": "0" * 64,
        "size_bytes": 1,
    }
    assert (await api.client.post("/v1/apk-versions", json=build, headers=api.op())).status == 201
    r = await api.client.post(
        "/v1/apk-installations", json={"build_id": "b-1", "status": "installed"}, headers=dev(owner)
    )
    assert r.status == 201
    r = await api.client.post(
        "/v1/apk-installations", json={"build_id": "b-1", "status": "failed"}, headers=dev(stranger)
    )
    assert r.status == 201 and (await r.json())["device_id"] == "stranger"
    rows = await api.count(
        "SELECT count(*) FROM apk_installations WHERE device_id = 'owner' AND status = 'installed'"
    )
    assert rows == 1


async def test_operator_tokens_are_refused_on_device_command_endpoints_and_device_tokens_on_operator_ones(
    api: Api,
) -> None:
    owner, _ = await setup(api)
    r = await api.client.post("/v1/dispatches/owners-cmd/ack", json={"status": "delivered"}, headers=api.op())
    assert r.status == 403
    r = await api.client.get("/v1/device/commands", headers=api.op())
    assert r.status == 403
    for path in ("/v1/commands/owners-cmd", "/v1/devices/owner/commands", "/v1/commands"):
        r = await api.client.get(path, headers=dev(owner))
        assert r.status == 403, path
    r = await api.client.get("/v1/device/commands")
    assert r.status == 401


async def test_a_bulk_commands_belong_to_their_own_devices_and_devices_cannot_reach_bulks(api: Api) -> None:
    owner, stranger = await setup(api)
    body = {"request_id": "fleet-wipe", "action": "wipe", "selector": {"device_ids": ["owner"]}}
    r = await api.client.post("/v1/dispatches/bulk", json=body, headers=dev(stranger))
    assert r.status == 403
    r = await api.client.post("/v1/dispatches/bulk", json=body, headers=api.op())
    assert r.status == 202
    bulk_id = (await r.json())["id"]
    for method, path in (
        ("GET", f"/v1/dispatches/bulk/{bulk_id}"),
        ("POST", f"/v1/dispatches/bulk/{bulk_id}/cancel"),
    ):
        r = await api.client.request(method, path, headers=dev(owner))
        assert r.status == 403, path
    for _ in range(200):  # until the expander created the owner's command
        r = await api.client.get("/v1/device/commands", headers=dev(owner))
        if "fleet-wipe:owner" in [c["request_id"] for c in (await r.json())["commands"]]:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the bulk's command was not created")
    r = await api.client.get("/v1/device/commands", headers=dev(stranger))
    assert (await r.json())["commands"] == []
    r = await api.client.post(
        "/v1/dispatches/fleet-wipe:owner/ack", json={"status": "executed"}, headers=dev(stranger)
    )
    assert r.status == 404
    r = await api.client.get("/v1/commands/fleet-wipe:owner", headers=api.op())
    assert (await r.json())["status"] == "pending"
