"""Bulk dispatch over HTTP: targets fixed at creation, one command per target under a derived
request id, retries that change nothing, progress by status, cancel, and every bad selector a
422 naming its field."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import asyncpg
import pytest

from service.api.bulk import BULK_EXPANDER
from service.app import ROW_STAGES
from service.audit.log import Actor
from service.bulk.dispatches import (
    MAX_DEVICE_IDS,
    Selection,
    create_bulk,
    expand_chunk,
)
from service.ingest.connection import prepare_connection
from tests.api.test_commands import ack, dev
from tests.api.test_operators import bearer, new_operator
from tests.support.app import Api
from tests.support.fleet import add_devices


async def post_bulk(api: Api, body: dict[str, Any], headers: dict[str, str] | None = None) -> tuple[int, Any]:
    r = await api.client.post("/v1/dispatches/bulk", json=body, headers=headers or api.op())
    return r.status, await r.json()


async def seed(api: Api, ids: list[str]) -> None:
    """Enrolled devices, never seen, straight into their tables."""
    conn = await asyncpg.connect(api.db_url)
    try:
        await add_devices(conn, ids)
    finally:
        await conn.close()


def bulk_body(request_id: str = "b1", **selector: Any) -> dict[str, Any]:
    return {"request_id": request_id, "action": "lock", "payload": {"pin": "1234"}, "selector": selector}


async def view(api: Api, bulk_id: int, **query: Any) -> dict[str, Any]:
    r = await api.client.get(f"/v1/dispatches/bulk/{bulk_id}", params=query, headers=api.op())
    assert r.status == 200, await r.text()
    return await r.json()


async def until_created(api: Api, bulk_id: int, within: float = 30.0) -> dict[str, Any]:
    async with asyncio.timeout(within):
        while True:
            body = await view(api, bulk_id)
            if body["bulk"]["status"] != "creating":
                return body
            await asyncio.sleep(0.05)


async def test_explicit_ids_get_one_command_each_under_derived_request_ids(api: Api) -> None:
    tokens = {d: await api.enroll(d) for d in ("phone-a", "phone-b", "phone-c")}
    await api.enroll("phone-other")
    status, bulk = await post_bulk(api, bulk_body(device_ids=["phone-c", "phone-a", "phone-b", "phone-a"]))
    assert status == 202, bulk
    assert bulk["target_count"] == 3 and bulk["action"] == "lock" and bulk["created_by"] == "alice"
    assert bulk["selector"] == {"device_ids": ["phone-a", "phone-b", "phone-c"]}
    body = await until_created(api, bulk["id"])
    assert body["bulk"]["status"] == "created"
    assert body["counts"] == {
        "created": 3,
        "by_status": {"pending": 3},
        "by_push_status": {"not_configured": 3},
    }
    targets = body["targets"]
    assert [t["device_id"] for t in targets] == ["phone-a", "phone-b", "phone-c"]
    for t in targets:
        assert t["command"]["request_id"] == f"b1:{t['device_id']}"
        assert t["command"]["payload"] == {"pin": "1234"} and t["command"]["created_by"] == "alice"
    # The device pulls it and acks it like any command; the bulk's counts follow.
    r = await api.client.get("/v1/device/commands", headers=dev(tokens["phone-a"]))
    assert [c["request_id"] for c in (await r.json())["commands"]] == ["b1:phone-a"]
    status, _ = await ack(api, tokens["phone-a"], "b1:phone-a", status="executed")
    assert status == 200
    assert (await view(api, bulk["id"]))["counts"]["by_status"] == {"executed": 1, "pending": 2}
    assert await api.count("SELECT count(*) FROM commands WHERE device_id = 'phone-other'") == 0


async def test_a_retried_bulk_changes_nothing_and_a_different_one_under_its_id_is_409(api: Api) -> None:
    for d in ("p1", "p2"):
        await api.enroll(d)
    status, first = await post_bulk(api, bulk_body(device_ids=["p1", "p2"]))
    assert status == 202
    await until_created(api, first["id"])
    status, again = await post_bulk(api, bulk_body(device_ids=["p2", "p1"]))  # same set, other order
    assert status == 200 and again["id"] == first["id"] and again["target_count"] == 2
    status, body = await post_bulk(api, {**bulk_body(device_ids=["p1", "p2"]), "action": "wipe"})
    assert status == 409 and body["error"]["field"] == "request_id"
    status, body = await post_bulk(api, bulk_body(device_ids=["p1"]))
    assert status == 409
    assert await api.count("SELECT count(*) FROM commands") == 2
    assert await api.count("SELECT count(*) FROM bulk_dispatches") == 1


async def test_concurrent_identical_bulks_create_one_and_target_each_device_once(api: Api) -> None:
    await seed(api, [f"d{i:03}" for i in range(300)])
    answers = await asyncio.gather(*(post_bulk(api, bulk_body("same", all=True)) for _ in range(6)))
    statuses = sorted(s for s, _ in answers)
    assert statuses == [200] * 5 + [202], answers
    assert len({b["id"] for _, b in answers}) == 1
    body = await until_created(api, answers[0][1]["id"])
    assert body["counts"]["created"] == 300
    assert await api.count("SELECT count(*) FROM commands") == 300
    assert await api.count("SELECT count(DISTINCT device_id) FROM commands") == 300


async def test_filters_select_as_the_device_list_does_and_revoked_devices_are_not_targeted(api: Api) -> None:
    for d in ("kiosk-1", "kiosk-2", "phone-1", "phone-2"):
        await api.enroll(d)
    for d in ("kiosk-1", "kiosk-2", "phone-1"):
        r = await api.client.put(f"/v1/devices/{d}/tags", json={"tags": ["berlin"]}, headers=api.op())
        assert r.status == 200, await r.text()
    r = await api.client.post("/v1/devices/kiosk-2/revoke", headers=api.op())
    assert r.status == 200, await r.text()
    r = await api.client.get("/v1/devices", params={"tag": "berlin", "q": "kiosk"}, headers=api.op())
    listed = [d["device_id"] for d in (await r.json())["devices"] if not d["credential_revoked"]]
    status, bulk = await post_bulk(api, bulk_body("by-tag", filter={"tag": "berlin", "q": "kiosk"}))
    assert status == 202 and bulk["target_count"] == len(listed) == 1
    assert bulk["selector"] == {"filter": {"tag": "berlin", "q": "kiosk"}}
    body = await until_created(api, bulk["id"])
    assert [t["device_id"] for t in body["targets"]] == listed == ["kiosk-1"]
    status, bulk = await post_bulk(api, bulk_body("never-seen", filter={"presence": "never_seen"}))
    assert status == 202 and bulk["target_count"] == 3  # kiosk-2 is revoked
    status, bulk = await post_bulk(api, bulk_body("everyone", all=True))
    assert status == 202 and bulk["target_count"] == 3


async def test_targets_page_in_device_id_order_with_after(api: Api) -> None:
    await seed(api, [f"dev-{i:02}" for i in range(25)])
    _, bulk = await post_bulk(api, bulk_body(all=True))
    await until_created(api, bulk["id"])
    seen: list[str] = []
    after = None
    while True:
        page = await view(api, bulk["id"], limit=10, **({"after": after} if after else {}))
        seen += [t["device_id"] for t in page["targets"]]
        assert all(t["command"]["status"] == "pending" for t in page["targets"])
        if (after := page["next_after"]) is None:
            break
    assert seen == [f"dev-{i:02}" for i in range(25)]


async def test_cancel_stops_creation_and_cancels_the_open_commands_only(api: Api) -> None:
    tokens = {d: await api.enroll(d) for d in ("c1", "c2", "c3")}
    _, bulk = await post_bulk(api, bulk_body(device_ids=["c1", "c2", "c3"]))
    await until_created(api, bulk["id"])
    await ack(api, tokens["c1"], "b1:c1", status="executed")
    await ack(api, tokens["c2"], "b1:c2", status="delivered")
    viewer = await new_operator(api, "val", role="viewer")
    r = await api.client.post(f"/v1/dispatches/bulk/{bulk['id']}/cancel", headers=bearer(viewer))
    assert r.status == 403
    r = await api.client.post(f"/v1/dispatches/bulk/{bulk['id']}/cancel", headers=api.op())
    body = await r.json()
    assert r.status == 200 and body["cancelled"] == 2 and body["bulk"]["status"] == "cancelled"
    counts = (await view(api, bulk["id"]))["counts"]["by_status"]
    assert counts == {"cancelled": 2, "executed": 1}
    r = await api.client.get("/v1/device/commands", headers=dev(tokens["c3"]))
    assert (await r.json())["commands"] == []
    status, late = await ack(api, tokens["c3"], "b1:c3", status="executed")
    assert status == 409 and late["command"]["status"] == "cancelled"
    r = await api.client.post(f"/v1/dispatches/bulk/{bulk['id']}/cancel", headers=api.op())
    assert r.status == 200 and (await r.json())["cancelled"] == 0
    actions = await api.count(
        "SELECT count(*) FROM operator_audit WHERE target = $1 AND action IN ('bulk.create', 'bulk.cancel')",
        f"bulk:{bulk['id']}",
    )
    assert actions == 3  # created, cancelled twice


async def test_a_bulk_cancelled_half_way_creates_no_more_commands(api: Api) -> None:
    """Expansion resumes from its mark, and a cancel between chunks ends it: no command is ever
    created twice or after the cancel."""
    await api.app[BULK_EXPANDER].stop()  # this test creates the chunks itself
    conn = await asyncpg.connect(api.db_url)
    await prepare_connection(conn, stages=ROW_STAGES)  # as the service's pool does
    try:
        await add_devices(conn, [f"h{i:02}" for i in range(10)])
        async with conn.transaction():
            created = await create_bulk(
                conn, "half", "lock", None, Selection(all=True), {"all": True}, None, Actor("alice")
            )
        bulk_id = created.bulk.id
        first = await expand_chunk(conn, push_ttl=None, chunk=4)
        second = await expand_chunk(conn, push_ttl=None, chunk=4)
        assert first is not None and second is not None
        assert (first.targets, first.done, second.targets, second.done) == (4, False, 4, False)
        marked = await conn.fetchval("SELECT expanded_through FROM bulk_dispatches WHERE id = $1", bulk_id)
        assert marked == "h07"
        r = await api.client.post(f"/v1/dispatches/bulk/{bulk_id}/cancel", headers=api.op())
        assert r.status == 200 and (await r.json())["cancelled"] == 8
        assert await expand_chunk(conn, push_ttl=None, chunk=4) is None
        assert await conn.fetchval("SELECT count(*) FROM commands") == 8
    finally:
        await conn.close()
    body = await view(api, bulk_id)
    assert body["bulk"]["target_count"] == 10 and body["counts"]["created"] == 8
    assert [t["command"] is None for t in body["targets"]] == [False] * 8 + [True] * 2


async def test_a_bulk_during_heartbeats_targets_each_device_once(api: Api) -> None:
    tokens = {f"hb-{i}": await api.enroll(f"hb-{i}") for i in range(8)}

    async def beat(token: str) -> None:
        for _ in range(10):
            r = await api.client.post(
                "/v1/heartbeats", json={"status": "ok", "battery_pct": 50}, headers=dev(token)
            )
            assert r.status == 200, await r.text()

    beats = [asyncio.create_task(beat(t)) for t in tokens.values()]
    status, bulk = await post_bulk(api, bulk_body("during", filter={"q": "hb-"}))
    await asyncio.gather(*beats)
    assert status == 202 and bulk["target_count"] == 8
    body = await until_created(api, bulk["id"])
    assert body["counts"]["created"] == 8
    assert await api.count("SELECT count(*) FROM commands") == 8
    # Every heartbeat was answered 200 (stored: one row per device and bucket).
    assert await api.count("SELECT count(DISTINCT device_id) FROM device_heartbeats") == 8


def long_id(n: int) -> str:
    return "x" * (128 - len(str(n))) + str(n)


async def test_a_long_device_id_gets_a_digest_request_id_within_128_characters(api: Api) -> None:
    device = long_id(1)
    await api.enroll(device)
    _, bulk = await post_bulk(api, bulk_body("long-bulk", device_ids=[device]))
    body = await until_created(api, bulk["id"])
    request_id = body["targets"][0]["command"]["request_id"]
    assert request_id == f"long-bulk:{hashlib.sha256(device.encode()).hexdigest()}" and len(request_id) <= 128
    r = await api.client.get(f"/v1/commands/{request_id}", headers=api.op())
    assert r.status == 200 and (await r.json())["device_id"] == device


@pytest.mark.parametrize(
    ("selector", "field"),
    [
        ({}, "selector"),
        ({"filter": {}}, "selector.filter"),
        ({"all": False}, "selector.all"),
        ({"all": True, "device_ids": ["p1"]}, "selector"),
        ({"filter": {"colour": "red"}}, "selector.filter.colour"),
        ({"filter": {"tag": "no spaces"}}, "selector.filter.tag"),
        ({"filter": {"presence": "asleep"}}, "selector.filter.presence"),
        ({"device_ids": []}, "selector.device_ids"),
        ({"device_ids": ["p1", "nobody"]}, "selector.device_ids"),
        ({"device_ids": [f"d{i}" for i in range(MAX_DEVICE_IDS + 1)]}, "selector.device_ids"),
    ],
)
async def test_a_bad_selector_is_422_naming_its_field_and_creates_nothing(
    api: Api, selector: dict[str, Any], field: str
) -> None:
    await api.enroll("p1")
    status, body = await post_bulk(api, bulk_body(**selector))
    assert status == 422, body
    assert body["error"]["field"] == field, body
    assert await api.count("SELECT count(*) FROM bulk_dispatches") == 0


async def test_a_viewer_cannot_create_and_an_unknown_bulk_is_404(api: Api) -> None:
    await api.enroll("p1")
    viewer = await new_operator(api, "val", role="viewer")
    status, _ = await post_bulk(api, bulk_body(all=True), headers=bearer(viewer))
    assert status == 403
    r = await api.client.get("/v1/dispatches/bulk/999", headers=bearer(viewer))
    assert r.status == 404 and (await r.json())["error"]["field"] == "bulk_id"
    r = await api.client.post("/v1/dispatches/bulk/999/cancel", headers=api.op())
    assert r.status == 404
    status, body = await post_bulk(api, {**bulk_body(all=True), "request_id": "x" * 49})
    assert status == 422 and body["error"]["field"] == "request_id"
