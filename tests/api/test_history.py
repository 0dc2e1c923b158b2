"""History over HTTP: a heartbeat posted a moment ago is in the device's history at once (the
fleet's waits for the rollups); operator auth; every bad parameter is answered 422 naming its field."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.support.app import Api


def dev(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_a_heartbeat_just_posted_is_in_the_device_history_at_once(api: Api) -> None:
    token = await api.enroll("hist-1")
    r = await api.client.post(
        "/v1/heartbeats", json={"status": "charging", "battery_pct": 77}, headers=dev(token)
    )
    assert r.status == 200, await r.text()

    r = await api.client.get("/v1/devices/hist-1/history", headers=api.op())
    assert r.status == 200, await r.text()
    body = await r.json()
    assert body["bucket"] == "1h" and body["device_id"] == "hist-1"
    assert len(body["buckets"]) == 1
    (bucket,) = body["buckets"]
    assert bucket["heartbeats"] == 1 and bucket["battery_avg"] == 77.0
    assert bucket["status_counts"] == {"ok": 0, "charging": 1, "idle": 0, "low_battery": 0, "other": 0}
    # Ninety days of hourly rollups: earlier buckets are absent, and the answer says so.
    available = datetime.fromisoformat(body["available_from"])
    now = datetime.now(UTC)
    assert timedelta(days=89) < now - available <= timedelta(days=90)

    # The fleet's history is read from the rollups alone: nothing is materialized yet, and the
    # answer says so (the device's own history above has the raw tail).
    r = await api.client.get("/v1/fleet/history", params={"bucket": "1d"}, headers=api.op())
    assert r.status == 200, await r.text()
    fleet = await r.json()
    assert fleet["buckets"] == []
    until = fleet["materialized_until"]
    assert until is None or datetime.fromisoformat(until) <= now - timedelta(hours=1)
    assert timedelta(days=399) < now - datetime.fromisoformat(fleet["available_from"]) <= timedelta(days=400)


async def test_history_is_for_operators_only_and_knows_its_devices(api: Api) -> None:
    token = await api.enroll("hist-2")
    assert (await api.client.get("/v1/fleet/history")).status == 401
    assert (await api.client.get("/v1/devices/hist-2/history", headers=dev(token))).status == 403
    r = await api.client.get("/v1/devices/nobody/history", headers=api.op())
    assert r.status == 404
    assert (await r.json())["error"]["field"] == "device_id"


@pytest.mark.parametrize(
    ("params", "status", "field"),
    [
        ({"bucket": "5m"}, 422, "bucket"),
        ({"from": "yesterday"}, 422, "from"),
        ({"to": "2025-11-01T00:00:00"}, 422, "to"),  # no UTC offset
        ({"from": "0001-01-01T00:00:00+14:00"}, 422, "from"),  # before year 1 in UTC
        ({"from": "2025-11-02T00:00:00Z", "to": "2025-11-01T00:00:00Z"}, 422, "from"),
        ({"from": "2000-01-01T00:00:00Z", "to": "2025-11-01T00:00:00Z", "bucket": "1h"}, 422, "from"),
        ({"to": "0001-01-01T00:00:00Z"}, 422, "to"),
    ],
)
async def test_bad_parameters_are_named(api: Api, params: dict[str, str], status: int, field: str) -> None:
    for path in ("/v1/fleet/history", "/v1/devices/hist-3/history"):
        r = await api.client.get(path, params=params, headers=api.op())
        assert r.status == status, await r.text()
        assert (await r.json())["error"]["field"] == field


async def test_history_endpoints_are_in_the_openapi_document(api: Api) -> None:
    doc = await (await api.client.get("/openapi.json")).json()
    for path in ("/v1/devices/{device_id}/history", "/v1/fleet/history"):
        op = doc["paths"][path]["get"]
        assert op["security"] == [{"operator": []}]
        assert {p["name"] for p in op["parameters"] if p["in"] == "query"} == {"from", "to", "bucket"}
        assert {"200", "401", "422"} <= set(op["responses"])
        assert "400" not in op["responses"]  # no body: nothing about the request is a 400
