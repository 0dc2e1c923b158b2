"""Device tags: an admin sets a device's whole set of tags; the device list and the fleet
summary filter by one; bad tags are 422 naming `tags` and write nothing."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.api.test_operators import bearer, new_operator
from tests.support.app import Api


async def put_tags(
    api: Api, device_id: str, body: Any, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    r = await api.client.put(f"/v1/devices/{device_id}/tags", json=body, headers=headers or api.op())
    return r.status, await r.json()


async def listed(api: Api, query: str) -> list[str]:
    r = await api.client.get(f"/v1/devices?{query}", headers=api.op())
    assert r.status == 200, await r.text()
    return [d["device_id"] for d in (await r.json())["devices"]]


async def test_put_sets_the_whole_set_sorted_once_and_says_whether_it_changed(api: Api) -> None:
    await api.enroll("phone-1")
    status, body = await put_tags(api, "phone-1", {"tags": ["site:berlin", "kiosk", "kiosk"]})
    assert status == 200
    assert body == {"device_id": "phone-1", "tags": ["kiosk", "site:berlin"], "changed": True}
    status, body = await put_tags(api, "phone-1", {"tags": ["site:berlin", "kiosk"]})
    assert status == 200 and body["changed"] is False
    status, body = await put_tags(api, "phone-1", {"tags": ["pilot/2025", "kiosk"]})
    assert body == {"device_id": "phone-1", "tags": ["kiosk", "pilot/2025"], "changed": True}
    r = await api.client.get("/v1/devices/phone-1", headers=api.op())
    assert (await r.json())["tags"] == ["kiosk", "pilot/2025"]
    status, body = await put_tags(api, "phone-1", {"tags": []})
    assert body["tags"] == [] and body["changed"] is True
    assert await api.count("SELECT count(*) FROM device_tags") == 0


async def test_bad_tags_are_422_naming_tags_and_write_nothing(api: Api) -> None:
    await api.enroll("phone-1")
    await put_tags(api, "phone-1", {"tags": ["keep"]})
    bad_bodies: list[Any] = [
        {"tags": [f"t{i}" for i in range(33)]},  # more than 32
        {"tags": ["has space"]},
        {"tags": [""]},
        {"tags": ["-leading-dash"]},
        {"tags": ["x" * 65]},
        {"tags": ["ok", "semi;colon"]},
        {"tags": ["comma,separated"]},
        {"tags": ["new\nline"]},
        {"tags": "kiosk"},
        {"tags": [1]},
        {},
    ]
    for bad in bad_bodies:
        status, body = await put_tags(api, "phone-1", bad)
        assert status == 422, (bad, body)
        assert body["error"]["field"].startswith("tags"), (bad, body)
    assert await api.count("SELECT count(*) FROM device_tags WHERE tag <> 'keep'") == 0
    status, body = await put_tags(api, "phone-1", {"tags": ["x" * 64]})
    assert status == 200


async def test_unknown_device_is_404_and_a_viewer_gets_403(api: Api) -> None:
    status, body = await put_tags(api, "nobody", {"tags": ["a"]})
    assert status == 404 and body["error"]["field"] == "device_id"
    await api.enroll("phone-1")
    viewer = await new_operator(api, "val", role="viewer")
    status, body = await put_tags(api, "phone-1", {"tags": ["a"]}, headers=bearer(viewer))
    assert status == 403 and body["error"]["code"] == "forbidden"
    assert await api.count("SELECT count(*) FROM device_tags") == 0


async def test_device_list_filters_by_tag_with_the_other_filters_and_pages(api: Api) -> None:
    for i in range(5):
        await api.enroll(f"phone-{i}")
    for i in (0, 2, 3, 4):
        await put_tags(api, f"phone-{i}", {"tags": ["site:berlin"] + (["kiosk"] if i % 2 == 0 else [])})
    assert await listed(api, "tag=site:berlin") == ["phone-0", "phone-2", "phone-3", "phone-4"]
    assert await listed(api, "tag=kiosk") == ["phone-0", "phone-2", "phone-4"]
    assert await listed(api, "tag=kiosk&q=phone-2") == ["phone-2"]
    assert await listed(api, "tag=kiosk&presence=never_seen") == ["phone-0", "phone-2", "phone-4"]
    assert await listed(api, "tag=kiosk&presence=offline") == []
    assert await listed(api, "tag=nothing-has-it") == []
    seen: list[str] = []
    cursor: str | None = None
    while True:
        params = {"tag": "site:berlin", "limit": "1", **({"cursor": cursor} if cursor else {})}
        r = await api.client.get("/v1/devices", params=params, headers=api.op())
        page = await r.json()
        seen += [d["device_id"] for d in page["devices"]]
        assert all(d["tags"] for d in page["devices"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ["phone-0", "phone-2", "phone-3", "phone-4"]
    for bad in ("tag=", "tag=has%20space", "tag=" + "x" * 65, "tag=a,b"):
        r = await api.client.get(f"/v1/devices?{bad}", headers=api.op())
        assert r.status == 422 and (await r.json())["error"]["field"] == "tag", bad


async def test_fleet_summary_counts_only_the_tagged_devices(api: Api) -> None:
    tokens = {f"phone-{i}": await api.enroll(f"phone-{i}") for i in range(4)}
    await put_tags(api, "phone-1", {"tags": ["kiosk"]})
    await put_tags(api, "phone-2", {"tags": ["kiosk", "site:oslo"]})
    r = await api.client.post(
        "/v1/heartbeats",
        json={"status": "ok", "battery_pct": 10, "app_version": "3.1.0"},
        headers={"Authorization": f"Bearer {tokens['phone-2']}"},
    )
    assert r.status == 200, await r.text()
    r = await api.client.get("/v1/fleet/summary?tag=kiosk", headers=api.op())
    kiosk = await r.json()
    assert r.status == 200
    assert kiosk["total"] == 2 and kiosk["presence"]["online"] == 1 and kiosk["presence"]["never_seen"] == 1
    assert kiosk["battery"] == {"<15": 1, "15-49": 0, ">=50": 0, "unknown": 1}
    assert kiosk["app_versions"] == [{"app_version": "3.1.0", "devices": 1}]
    r = await api.client.get("/v1/fleet/summary?tag=site:oslo", headers=api.op())
    assert (await r.json())["total"] == 1
    r = await api.client.get("/v1/fleet/summary?tag=nobody", headers=api.op())
    assert (await r.json())["total"] == 0
    r = await api.client.get("/v1/fleet/summary", headers=api.op())
    assert (await r.json())["total"] == 4
    r = await api.client.get("/v1/fleet/summary?tag=a%20b", headers=api.op())
    assert r.status == 422 and (await r.json())["error"]["field"] == "tag"


async def test_concurrent_puts_leave_one_of_the_sets_never_a_mix(api: Api) -> None:
    await api.enroll("phone-1")
    sets = [[f"set{i}-a", f"set{i}-b", f"set{i}-c"] for i in range(8)]
    results = await asyncio.gather(*(put_tags(api, "phone-1", {"tags": tags}) for tags in sets))
    assert all(status == 200 for status, _ in results)
    r = await api.client.get("/v1/devices/phone-1", headers=api.op())
    final = (await r.json())["tags"]
    assert final in sets
