"""The fleet view over HTTP: the device list pages without skipping or repeating while devices
beat, offline devices are listed oldest first with the went_offline event at their
offline_since, the summary equals a brute-force count, lifecycle and enrollment events are
listed newest first, and every bad query value is 422 naming its parameter."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import pytest

from service.api.state import SERVICES
from service.fleet.presence import run_pass
from service.ingest.heartbeats import HeartbeatRow
from tests.support.app import Api
from tests.support.fleet import add_devices


def dev(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def get(api: Api, path: str, **params: Any) -> Any:
    r = await api.client.get(path, params=params, headers=api.op())
    assert r.status == 200, await r.text()
    return await r.json()


async def test_an_enrolled_device_is_never_seen_then_online_with_its_heartbeats_values(api: Api) -> None:
    token = await api.enroll("phone-1")
    body = await get(api, "/v1/devices/phone-1")
    assert (body["presence"], body["last_seen_at"], body["offline_since"]) == ("never_seen", None, None)
    r = await api.client.post(
        "/v1/heartbeats",
        json={"status": "charging", "battery_pct": 64, "app_version": "3.1.0", "network": "lte"},
        headers=dev(token),
    )
    assert r.status == 200, await r.text()
    body = await get(api, "/v1/devices/phone-1")
    assert body["presence"] == "online"
    assert (
        body["last_status"],
        body["last_battery_pct"],
        body["last_app_version"],
        body["last_network"],
    ) == (
        "charging",
        64,
        "3.1.0",
        "lte",
    )
    assert body["expected_interval_seconds"] == 60.0
    seen = datetime.fromisoformat(body["last_seen_at"])
    assert datetime.fromisoformat(body["offline_after"]) == seen + timedelta(seconds=180)

    r = await api.client.post("/v1/devices/phone-1/revoke", headers=api.op())
    assert r.status == 200
    assert (await get(api, "/v1/devices/phone-1"))["presence"] == "revoked"
    listed = await get(api, "/v1/devices", presence="revoked")
    assert [d["device_id"] for d in listed["devices"]] == ["phone-1"]


async def test_paging_a_thousand_devices_while_they_beat_skips_and_repeats_none(api: Api) -> None:
    ids = [f"pg-{i:04d}" for i in range(1000)]
    conn = await asyncpg.connect(api.db_url)
    try:
        await add_devices(conn, ids)
    finally:
        await conn.close()
    writer = api.app[SERVICES].writer
    stop = asyncio.Event()

    async def beat() -> int:
        sent = 0
        rng = random.Random(7)
        while not stop.is_set():
            batch = rng.sample(ids, 50)
            now = datetime.now().astimezone()
            await writer.submit([HeartbeatRow(d, now, "ok", 50, "1.0", None, None) for d in batch])
            sent += 1
        return sent

    beating = asyncio.create_task(beat())
    seen: list[str] = []
    cursor = None
    pages = 0
    try:
        while True:
            params: dict[str, Any] = {"limit": 37}
            if cursor is not None:
                params["cursor"] = cursor
            body = await get(api, "/v1/devices", **params)
            seen += [d["device_id"] for d in body["devices"]]
            pages += 1
            cursor = body["next_cursor"]
            if cursor is None:
                break
            await asyncio.sleep(0)
    finally:
        stop.set()
        batches = await beating
    assert batches > 0
    assert pages == 28
    assert seen == ids  # every device once, in device_id order


async def test_offline_devices_are_listed_oldest_first_with_their_went_offline_event(api: Api) -> None:
    conn = await asyncpg.connect(api.db_url)
    try:
        ids = [f"off-{i:02d}" for i in range(30)]
        await add_devices(conn, ids)
        now = await conn.fetchval("SELECT now()")
        # Odd devices went offline i minutes ago (deadline passed); even ones are online.
        await conn.execute(
            "UPDATE device_presence SET last_seen_at = $1::timestamptz - interval '1 hour',"
            " expected_interval_seconds = 60,"
            " offline_after = CASE WHEN substr(device_id, 5)::int % 2 = 1"
            "   THEN $1::timestamptz - substr(device_id, 5)::int * interval '1 minute'"
            "   ELSE $1::timestamptz + interval '1 hour' END",
            now,
        )
        await conn.execute("UPDATE devices SET credential_revoked_at = now() WHERE id = 'off-29'")
        # Half of them recorded by a maintenance pass at a moment in between; the rest pending.
        await run_pass(conn, now - timedelta(minutes=14, seconds=30))
        expected = [f"off-{i:02d}" for i in range(27, 0, -2)]

        listed: list[dict[str, Any]] = []
        cursor = None
        while True:
            params: dict[str, Any] = {"presence": "offline", "limit": 4}
            if cursor:
                params["cursor"] = cursor
            body = await get(api, "/v1/devices", **params)
            listed += body["devices"]
            cursor = body["next_cursor"]
            if cursor is None:
                break
        assert [d["device_id"] for d in listed] == expected
        assert all(d["presence"] == "offline" for d in listed)
        since = [datetime.fromisoformat(d["offline_since"]) for d in listed]
        assert since == sorted(since)

        await run_pass(conn)  # the maintenance pass catches up
        events = {
            r["device_id"]: r["occurred_at"]
            for r in await conn.fetch(
                "SELECT device_id, occurred_at FROM events WHERE type = 'device.went_offline'"
            )
        }
        for d, at in zip(listed, since, strict=True):
            assert events[d["device_id"]] == at
        online = await get(api, "/v1/devices", presence="online", limit=1000)
        assert [d["device_id"] for d in online["devices"]] == [f"off-{i:02d}" for i in range(0, 30, 2)]
    finally:
        await conn.close()


async def test_filters_narrow_the_list(api: Api) -> None:
    conn = await asyncpg.connect(api.db_url)
    try:
        await add_devices(conn, ["f-1", "f-2", "f-3", "g-1"])
        await conn.execute(
            "UPDATE device_presence SET last_seen_at = now(), offline_after = now() + interval '1 hour',"
            " last_app_version = CASE WHEN device_id IN ('f-1', 'g-1') THEN '2.0' ELSE '1.0' END,"
            " last_status = CASE WHEN device_id = 'f-2' THEN 'idle' ELSE 'ok' END,"
            " last_battery_pct = CASE WHEN device_id = 'f-3' THEN 9 ELSE 80 END"
        )
    finally:
        await conn.close()

    async def ids(**params: Any) -> list[str]:
        return [d["device_id"] for d in (await get(api, "/v1/devices", **params))["devices"]]

    assert await ids(app_version="2.0") == ["f-1", "g-1"]
    assert await ids(status="idle") == ["f-2"]
    assert await ids(battery_below=15) == ["f-3"]
    assert await ids(q="f-") == ["f-1", "f-2", "f-3"]
    assert await ids(q="f-", app_version="2.0") == ["f-1"]
    assert await ids(q="%") == []


async def test_the_summary_equals_a_brute_force_count_of_the_tables(api: Api) -> None:
    rng = random.Random(12)
    ids = [f"s-{i:04d}" for i in range(600)]
    conn = await asyncpg.connect(api.db_url)
    try:
        await add_devices(conn, ids)
        versions = [f"1.{v}" for v in range(25)]
        for device in rng.sample(ids, 520):  # the others are never seen
            await conn.execute(
                "UPDATE device_presence SET last_seen_at = now() - interval '1 hour',"
                " offline_after = now() + $2 * interval '1 minute', last_app_version = $3,"
                " last_status = $4, last_battery_pct = $5 WHERE device_id = $1",
                device,
                rng.randint(-60, 60),
                rng.choice([*versions, None]),
                rng.choice(["ok", "idle", "charging"]),
                rng.choice([None, rng.randint(0, 100)]),
            )
        await conn.execute(
            "UPDATE devices SET credential_revoked_at = now() WHERE id = ANY($1)", rng.sample(ids, 40)
        )
        await conn.execute(
            "UPDATE devices SET enrolled_at = now() - $2 * interval '1 hour' WHERE id = ANY($1)",
            rng.sample(ids, 300),
            100,
        )
        await run_pass(conn)
        body = await get(api, "/v1/fleet/summary")
        as_of = datetime.fromisoformat(body["as_of"])
        rows = await conn.fetch(
            "SELECT d.id, d.enrolled_at, d.credential_revoked_at, p.* FROM devices d"
            " LEFT JOIN device_presence p ON p.device_id = d.id"
        )
    finally:
        await conn.close()

    def presence(r: Any) -> str:
        if r["credential_revoked_at"] is not None:
            return "revoked"
        if r["last_seen_at"] is None:
            return "never_seen"
        return "offline" if r["offline_since"] or r["offline_after"] <= as_of else "online"

    def battery(pct: int | None) -> str:
        return "unknown" if pct is None else "<15" if pct < 15 else "15-49" if pct < 50 else ">=50"

    assert body["total"] == len(rows) == 600
    assert body["presence"] == dict(Counter(presence(r) for r in rows)) | {
        k: 0 for k in ("online", "offline", "never_seen", "revoked") if k not in {presence(r) for r in rows}
    }
    versions_count = Counter(r["last_app_version"] for r in rows)
    unknown = versions_count.pop(None)
    ranked = sorted(versions_count.items(), key=lambda kv: (-kv[1], kv[0]))
    assert [(v["app_version"], v["devices"]) for v in body["app_versions"]] == ranked[:20]
    assert body["other_app_versions"] == sum(n for _, n in ranked[20:])
    assert body["unknown_app_version"] == unknown
    statuses = Counter(r["last_status"] for r in rows if r["last_status"] is not None)
    assert body["statuses"] == dict(statuses)
    assert body["battery"] == dict(Counter(battery(r["last_battery_pct"]) for r in rows))
    assert body["enrolled_last_24h"] == sum(r["enrolled_at"] > as_of - timedelta(days=1) for r in rows) == 300
    assert body["enrolled_last_7d"] == 600


async def test_device_events_are_listed_newest_first_in_pages(api: Api) -> None:
    await api.enroll("life-1")
    assert (await api.client.post("/v1/devices/life-1/revoke", headers=api.op())).status == 200
    assert (await api.client.post("/v1/devices/life-1/reinstate", headers=api.op())).status == 200
    await api.enroll("life-1", bound=True)
    body = await get(api, "/v1/devices/life-1/events", limit=3)
    assert [e["event_type"] for e in body["events"]] == ["re_enrolled", "reinstated", "credential_revoked"]
    older = await get(api, "/v1/devices/life-1/events", limit=3, before=body["next_before"])
    assert [e["event_type"] for e in older["events"]] == ["enrolled"]
    assert older["next_before"] is None
    r = await api.client.get("/v1/devices/nobody/events", headers=api.op())
    assert r.status == 404


async def test_enrollment_events_show_who_used_a_token_and_what_was_refused(api: Api) -> None:
    minted = await api.mint(max_uses=2)
    for device in ("e-1", "e-2"):
        r = await api.client.post(
            "/v1/enroll", json={"enrollment_token": minted["token"], "device_id": device}
        )
        assert r.status == 201
    r = await api.client.post("/v1/enroll", json={"enrollment_token": "nope", "device_id": "e-3"})
    assert r.status == 401
    used = await get(api, "/v1/enrollment-events", token_id=minted["id"])
    assert [(e["device_id"], e["outcome"]) for e in used["events"]] == [
        ("e-2", "enrolled"),
        ("e-1", "enrolled"),
    ]
    refused = await get(api, "/v1/enrollment-events", outcome="refused")
    assert [(e["device_id"], e["attempts"]) for e in refused["events"]] == [("e-3", 1)]
    first = await get(api, "/v1/enrollment-events", limit=1)
    rest = await get(api, "/v1/enrollment-events", limit=10, before=first["next_before"])
    assert len(first["events"]) + len(rest["events"]) == 3


@pytest.mark.parametrize(
    ("path", "params", "field"),
    [
        ("/v1/devices", {"presence": "asleep"}, "presence"),
        ("/v1/devices", {"limit": "0"}, "limit"),
        ("/v1/devices", {"limit": "1001"}, "limit"),
        ("/v1/devices", {"limit": "many"}, "limit"),
        ("/v1/devices", {"battery_below": "-1"}, "battery_below"),
        ("/v1/devices", {"cursor": "not-a-cursor"}, "cursor"),
        ("/v1/devices", {"cursor": "WyJpZCIsImEiXQ", "presence": "offline"}, "cursor"),  # an id-order cursor
        ("/v1/devices", {"q": ""}, "q"),
        ("/v1/devices", {"app_version": "x" * 65}, "app_version"),
        ("/v1/enrollment-events", {"outcome": "maybe"}, "outcome"),
        ("/v1/enrollment-events", {"token_id": "0"}, "token_id"),
        ("/v1/enrollment-events", {"before": "x"}, "before"),
    ],
)
async def test_a_bad_query_value_is_422_naming_the_parameter(
    api: Api, path: str, params: dict[str, str], field: str
) -> None:
    r = await api.client.get(path, params=params, headers=api.op())
    assert r.status == 422, await r.text()
    assert (await r.json())["error"]["field"] == field


async def test_the_fleet_view_is_for_operators_only(api: Api) -> None:
    token = await api.enroll("nosy")
    for path in ("/v1/devices", "/v1/fleet/summary", "/v1/enrollment-events", "/v1/devices/nosy/events"):
        assert (await api.client.get(path)).status == 401
        assert (await api.client.get(path, headers=dev(token))).status == 403
