"""The contract clients are built against, end to end over HTTP on a real database."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import asyncpg

from tests.support.app import Api


def dev(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_enroll_post_heartbeats_read_them_newest_first(api: Api) -> None:
    token = await api.enroll("phone-1")
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)
    base -= timedelta(seconds=base.second % 10)
    single = await api.client.post(
        "/v1/heartbeats", json={"ts": base.isoformat(), "status": "ok", "battery_pct": 90}, headers=dev(token)
    )
    assert single.status == 200, await single.text()
    body = await single.json()
    assert body["device_id"] == "phone-1"
    assert body["results"][0]["stored"] is True

    batch = {
        "heartbeats": [
            {"ts": (base + timedelta(seconds=3)).isoformat(), "status": "ok", "battery_pct": 89},
            {"ts": (base + timedelta(seconds=11)).isoformat(), "status": "charging", "battery_pct": 88},
            {
                "ts": (base + timedelta(seconds=25)).isoformat(),
                "status": "ok",
                "battery_pct": 87,
                "app_version": "1.2.3",
                "network": "wifi",
                "extra": {"temp_c": 31},
            },
        ]
    }
    r = await api.client.post("/v1/heartbeats", json=batch, headers=dev(token))
    assert r.status == 200
    assert [x["stored"] for x in (await r.json())["results"]] == [False, True, True]

    r = await api.client.get("/v1/devices/phone-1/heartbeats", headers=api.op())
    assert r.status == 200
    listed = (await r.json())["heartbeats"]
    assert [h["battery_pct"] for h in listed] == [87, 88, 90]
    assert listed[0]["extra"] == {"temp_c": 31}

    r = await api.client.get("/v1/devices/phone-1/heartbeats?limit=1", headers=api.op())
    assert [h["battery_pct"] for h in (await r.json())["heartbeats"]] == [87]

    r = await api.client.get("/v1/devices/phone-1", headers=api.op())
    summary = await r.json()
    assert summary["last_battery_pct"] == 87 and summary["last_status"] == "ok"
    assert await api.count("SELECT count(*) FROM enrollment_events WHERE outcome = 'enrolled'") == 1
    assert await api.count("SELECT count(*) FROM events WHERE type = 'device.enrolled'") == 1


async def test_same_dispatch_request_id_twice_gives_201_then_200_with_same_dispatch(api: Api) -> None:
    await api.enroll("phone-2")
    req = {"request_id": "cmd-1", "device_id": "phone-2", "action": "ping", "payload": {"a": 1}}
    first = await api.client.post("/v1/dispatches", json=req, headers=api.op())
    second = await api.client.post("/v1/dispatches", json=req, headers=api.op())
    assert (first.status, second.status) == (201, 200)
    assert await first.json() == await second.json()
    looked_up = await api.client.get("/v1/dispatches/cmd-1", headers=api.op())
    assert await looked_up.json() == await first.json()
    listed = await api.client.get("/v1/devices/phone-2/dispatches", headers=api.op())
    assert [d["request_id"] for d in (await listed.json())["dispatches"]] == ["cmd-1"]
    conflicting = await api.client.post("/v1/dispatches", json={**req, "action": "wipe"}, headers=api.op())
    assert conflicting.status == 409
    assert (await conflicting.json())["error"]["field"] == "request_id"


async def test_a_dispatch_whose_row_retention_dropped_is_looked_up_as_expired(api: Api) -> None:
    await api.enroll("phone-5")
    req = {"request_id": "cmd-old", "device_id": "phone-5", "action": "ping", "payload": {"a": 1}}
    created = await (await api.client.post("/v1/dispatches", json=req, headers=api.op())).json()
    conn = await asyncpg.connect(api.db_url)
    try:  # what dropping the dispatch's chunk does; its idempotency key lives longer
        await conn.execute("DELETE FROM fcm_dispatches WHERE request_id = 'cmd-old'")
    finally:
        await conn.close()
    looked_up = await api.client.get("/v1/dispatches/cmd-old", headers=api.op())
    assert looked_up.status == 200
    body = await looked_up.json()
    assert (body["id"], body["request_id"], body["sent_at"], body["status"]) == (
        created["id"],
        "cmd-old",
        created["sent_at"],
        "expired",
    )
    assert body["device_id"] is None and body["action"] is None
    missing = await api.client.get("/v1/dispatches/cmd-never", headers=api.op())
    assert missing.status == 404
    assert (await missing.json())["error"]["field"] == "request_id"


async def test_fifty_concurrent_dispatches_with_one_request_id_make_one_row(api: Api) -> None:
    await api.enroll("phone-3")
    req = {"request_id": "cmd-50", "device_id": "phone-3", "action": "ping"}
    responses = await asyncio.gather(
        *(api.client.post("/v1/dispatches", json=req, headers=api.op()) for _ in range(50))
    )
    statuses = [r.status for r in responses]
    bodies = [await r.json() for r in responses]
    assert statuses.count(201) == 1 and statuses.count(200) == 49
    assert len({b["id"] for b in bodies}) == 1
    assert await api.count("SELECT count(*) FROM fcm_dispatches WHERE request_id = 'cmd-50'") == 1


async def test_apk_download_event_is_stored_for_the_calling_device(api: Api) -> None:
    token = await api.enroll("phone-4")
    r = await api.client.post(
        "/v1/apk-downloads",
        json={"build_id": "b-42", "outcome": "completed", "bytes_downloaded": 1024},
        headers=dev(token),
    )
    assert r.status == 201, await r.text()
    event = await r.json()
    assert event["device_id"] == "phone-4"
    assert (
        await api.count(
            "SELECT count(*) FROM apk_download_events WHERE id = $1 AND device_id = 'phone-4'", event["id"]
        )
        == 1
    )


async def test_apk_download_retried_with_its_event_key_is_stored_once(api: Api) -> None:
    token = await api.enroll("phone-6")
    other = await api.enroll("phone-7")
    ts = (datetime.now(UTC) - timedelta(minutes=3)).isoformat()
    body = {"build_id": "b-7", "outcome": "completed", "ts": ts, "event_key": "dl-1"}
    first = await api.client.post("/v1/apk-downloads", json=body, headers=dev(token))
    retries = await asyncio.gather(
        *(api.client.post("/v1/apk-downloads", json=body, headers=dev(token)) for _ in range(5))
    )
    assert first.status == 201 and (await first.json())["stored"] is True
    assert [r.status for r in retries] == [200] * 5
    answers = [await r.json() for r in [first, *retries]]
    ids = {a["id"] for a in answers}
    assert len(ids) == 1 and [a["stored"] for a in answers[1:]] == [False] * 5
    # The same key from another device is another event.
    theirs = await api.client.post("/v1/apk-downloads", json=body, headers=dev(other))
    assert theirs.status == 201 and (await theirs.json())["id"] not in ids
    assert await api.count("SELECT count(*) FROM apk_download_events WHERE build_id = 'b-7'") == 2
    # Without a key, every post is an event of its own.
    plain = {"build_id": "b-8", "outcome": "started", "ts": ts}
    for _ in range(2):
        assert (await api.client.post("/v1/apk-downloads", json=plain, headers=dev(token))).status == 201
    assert await api.count("SELECT count(*) FROM apk_download_events WHERE build_id = 'b-8'") == 2


async def test_health_metrics_and_openapi(api: Api) -> None:
    r = await api.client.get("/health")
    assert r.status == 200
    health = await r.json()
    assert health["ready"] and health["schema"] == "head" and health["database"] == "ok"
    token = await api.enroll("phone-5")
    await api.client.post("/v1/heartbeats", json={"status": "ok", "battery_pct": 1}, headers=dev(token))
    metrics = await (await api.client.get("/metrics")).text()
    assert 'telemetry_rows_written_total{table="device_heartbeats"} 1.0' in metrics
    assert "telemetry_write_queue_rows" in metrics
    spec = await (await api.client.get("/openapi.json")).json()
    assert spec["openapi"].startswith("3.")
    assert {"/v1/heartbeats", "/v1/dispatches", "/v1/enroll", "/v1/devices/{device_id}/heartbeats"} <= set(
        spec["paths"]
    )
    assert spec["paths"]["/v1/dispatches"]["post"]["security"] == [{"operator": []}]
