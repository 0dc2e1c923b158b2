"""Commands end to end over HTTP: dispatch creates the command, the device acks it forward,
pulls what push did not deliver, and operators read how far each command got."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from service.api.state import SERVICES
from tests.support.app import Api


def dev(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def dispatch(api: Api, request_id: str, device_id: str, action: str = "lock") -> dict[str, Any]:
    r = await api.client.post(
        "/v1/dispatches",
        json={"request_id": request_id, "device_id": device_id, "action": action, "payload": {"n": 1}},
        headers=api.op(),
    )
    assert r.status in (200, 201), await r.text()
    return await r.json()


async def ack(api: Api, token: str, request_id: str, **body: Any) -> tuple[int, dict[str, Any]]:
    r = await api.client.post(f"/v1/dispatches/{request_id}/ack", json=body, headers=dev(token))
    return r.status, await r.json()


async def test_dispatch_creates_its_command_once_in_the_same_transaction(api: Api) -> None:
    await api.enroll("phone-1")
    first = await dispatch(api, "req-1", "phone-1")
    again = await dispatch(api, "req-1", "phone-1")
    assert first == again
    assert await api.count("SELECT count(*) FROM commands WHERE request_id = 'req-1'") == 1
    r = await api.client.get("/v1/commands/req-1", headers=api.op())
    command = await r.json()
    assert r.status == 200
    assert command["status"] == "pending" and command["command"] == "lock"
    assert command["payload"] == {"n": 1} and command["device_id"] == "phone-1"
    assert command["created_at"] == first["sent_at"]
    assert command["delivered_at"] is None


async def test_whole_lifecycle_pending_delivered_executed_with_a_timestamp_per_transition(api: Api) -> None:
    token = await api.enroll("phone-1")
    await dispatch(api, "req-1", "phone-1")
    status, body = await ack(api, token, "req-1", status="delivered")
    assert status == 200 and body["changed"] is True
    assert body["command"]["status"] == "delivered" and body["command"]["delivered_at"] is not None
    status, body = await ack(api, token, "req-1", status="executed", result={"locked": True})
    assert status == 200 and body["changed"] is True
    command = body["command"]
    assert command["status"] == "executed" and command["result"] == {"locked": True}
    assert command["created_at"] <= command["delivered_at"] <= command["executed_at"]
    assert command["failed_at"] is None and command["expired_at"] is None
    r = await api.client.get("/v1/commands/req-1", headers=api.op())
    read = await r.json()
    assert read.pop("push")["status"] == "not_configured"  # operators' reads carry the push
    assert read == command


async def test_failed_ack_keeps_its_error_and_an_executed_ack_first_also_marks_it_delivered(api: Api) -> None:
    token = await api.enroll("phone-1")
    await dispatch(api, "req-f", "phone-1")
    await dispatch(api, "req-x", "phone-1")
    status, body = await ack(api, token, "req-f", status="failed", error="no device admin")
    assert status == 200 and body["command"]["status"] == "failed"
    assert body["command"]["error"] == "no device admin" and body["command"]["failed_at"] is not None
    assert body["command"]["delivered_at"] == body["command"]["failed_at"]
    status, body = await ack(api, token, "req-x", status="executed")
    assert status == 200 and body["command"]["delivered_at"] == body["command"]["executed_at"]


async def test_repeated_ack_is_200_with_the_current_state_and_changes_nothing(api: Api) -> None:
    token = await api.enroll("phone-1")
    await dispatch(api, "req-1", "phone-1")
    _, first = await ack(api, token, "req-1", status="delivered")
    status, again = await ack(api, token, "req-1", status="delivered")
    assert status == 200 and again["changed"] is False
    assert again["command"] == first["command"]
    await ack(api, token, "req-1", status="executed")
    status, again = await ack(api, token, "req-1", status="executed", result={"other": 1})
    assert status == 200 and again["changed"] is False and again["command"]["result"] is None


async def test_backward_or_sideways_ack_is_409_with_the_current_state(api: Api) -> None:
    token = await api.enroll("phone-1")
    await dispatch(api, "req-1", "phone-1")
    _, done = await ack(api, token, "req-1", status="executed")
    for backward in ("delivered", "failed"):
        status, body = await ack(api, token, "req-1", status=backward)
        assert status == 409
        assert body["error"]["code"] == "status_conflict" and body["error"]["field"] == "status"
        assert body["command"] == done["command"]


async def test_acks_with_a_device_clock_are_held_between_dispatch_and_now(api: Api) -> None:
    token = await api.enroll("phone-1")
    sent = await dispatch(api, "req-1", "phone-1")
    early = datetime.now(UTC) - timedelta(hours=1)
    status, body = await ack(api, token, "req-1", status="delivered", ts=early.isoformat())
    assert status == 200 and body["command"]["delivered_at"] == sent["sent_at"]
    too_late = datetime.now(UTC) + timedelta(hours=1)
    status, body = await ack(api, token, "req-1", status="executed", ts=too_late.isoformat())
    assert status == 422 and body["error"]["field"] == "ts"


async def test_ack_status_outside_the_list_is_422_naming_the_field(api: Api) -> None:
    token = await api.enroll("phone-1")
    await dispatch(api, "req-1", "phone-1")
    for bad in ({"status": "pending"}, {"status": "expired"}, {"status": "done"}, {}):
        status, body = await ack(api, token, "req-1", **bad)
        assert status == 422 and body["error"]["field"] == "status", bad
    status, body = await ack(api, token, "req-1", status="failed", error="x" * 1001)
    assert status == 422 and body["error"]["field"] == "error"
    assert await api.count("SELECT count(*) FROM commands WHERE status = 'pending'") == 1


async def test_ack_of_an_unknown_request_id_is_404(api: Api) -> None:
    token = await api.enroll("phone-1")
    status, body = await ack(api, token, "never-sent", status="delivered")
    assert status == 404 and body["error"]["field"] == "request_id"


async def test_concurrent_acks_of_one_command_leave_one_forward_history(api: Api) -> None:
    token = await api.enroll("phone-1")
    await dispatch(api, "req-1", "phone-1")
    sent = ("delivered", "executed", "delivered", "executed")
    results = await asyncio.gather(*(ack(api, token, "req-1", status=s) for s in sent))
    for status_sent, (status, body) in zip(sent, results, strict=True):
        # A delivered ack that lands after the executed one is backward: 409, nothing changes.
        assert status == 200 or (status == 409 and status_sent == "delivered"), (status_sent, body)
    executed = [body for s, (_, body) in zip(sent, results, strict=True) if s == "executed"]
    assert any(body["changed"] for body in executed)
    r = await api.client.get("/v1/commands/req-1", headers=api.op())
    assert (await r.json())["status"] == "executed"


async def test_pull_returns_only_the_callers_pending_commands_oldest_first(api: Api) -> None:
    mine = await api.enroll("phone-1")
    theirs = await api.enroll("phone-2")
    for i in range(3):
        await dispatch(api, f"mine-{i}", "phone-1")
        await dispatch(api, f"theirs-{i}", "phone-2")
    await ack(api, mine, "mine-1", status="delivered")
    r = await api.client.get("/v1/device/commands?status=pending", headers=dev(mine))
    body = await r.json()
    assert r.status == 200 and body["device_id"] == "phone-1"
    assert [c["request_id"] for c in body["commands"]] == ["mine-0", "mine-2"]
    r = await api.client.get("/v1/device/commands", headers=dev(theirs))
    assert [c["request_id"] for c in (await r.json())["commands"]] == ["theirs-0", "theirs-1", "theirs-2"]
    r = await api.client.get("/v1/device/commands?status=executed", headers=dev(mine))
    assert r.status == 422 and (await r.json())["error"]["field"] == "status"


async def test_operator_lists_a_devices_commands_by_status_and_pages_back_with_before(api: Api) -> None:
    token = await api.enroll("phone-1")
    for i in range(4):
        await dispatch(api, f"req-{i}", "phone-1")
    await ack(api, token, "req-3", status="executed")
    r = await api.client.get("/v1/devices/phone-1/commands", headers=api.op())
    listed = (await r.json())["commands"]
    assert [c["request_id"] for c in listed] == ["req-3", "req-2", "req-1", "req-0"]
    r = await api.client.get("/v1/devices/phone-1/commands?status=pending&limit=2", headers=api.op())
    page = (await r.json())["commands"]
    assert [c["request_id"] for c in page] == ["req-2", "req-1"]
    r = await api.client.get(
        "/v1/devices/phone-1/commands", params={"before": page[-1]["created_at"]}, headers=api.op()
    )
    assert [c["request_id"] for c in (await r.json())["commands"]] == ["req-0"]
    for query, field in (("status=queued", "status"), ("before=yesterday", "before")):
        r = await api.client.get(f"/v1/devices/phone-1/commands?{query}", headers=api.op())
        assert r.status == 422 and (await r.json())["error"]["field"] == field
    r = await api.client.get("/v1/devices/nobody/commands", headers=api.op())
    assert r.status == 404


async def test_stuck_commands_are_listed_fleet_wide_and_counted_in_the_device_summary(api: Api) -> None:
    token = await api.enroll("phone-1")
    await api.enroll("phone-2")
    await dispatch(api, "old", "phone-1")
    await dispatch(api, "fresh", "phone-2")
    await dispatch(api, "acked", "phone-1")
    await ack(api, token, "acked", status="delivered")
    conn_sql = (
        "UPDATE commands SET created_at = created_at - interval '1 hour' WHERE request_id IN ('old', 'acked')"
    )
    await api.count(f"WITH u AS ({conn_sql} RETURNING 1) SELECT count(*) FROM u")
    r = await api.client.get("/v1/commands?status=pending", headers=api.op())
    assert [c["request_id"] for c in (await r.json())["commands"]] == ["old"]
    r = await api.client.get("/v1/commands?status=pending&older_than=0", headers=api.op())
    assert [c["request_id"] for c in (await r.json())["commands"]] == ["old", "fresh"]
    r = await api.client.get("/v1/commands?older_than=-1", headers=api.op())
    assert r.status == 422 and (await r.json())["error"]["field"] == "older_than"
    r = await api.client.get("/v1/devices/phone-1", headers=api.op())
    push = (await r.json())["push"]
    assert push["stuck_commands"] == 1 and push["stuck_after_seconds"] == 600
    assert push["samples"] == 1 and push["delivery_p50_seconds"] >= 3600


async def test_reachability_is_p50_and_p95_over_the_last_20_delivered_commands(api: Api) -> None:
    token = await api.enroll("phone-1")
    for i in range(25):
        await dispatch(api, f"req-{i:02d}", "phone-1")
        await ack(api, token, f"req-{i:02d}", status="delivered")
    # Delays 1..25 s, by dispatch order; only the last 20 (6..25 s) count.
    # Command i: dispatched at minute i, delivered i + 1 seconds later.
    await api.count(
        "WITH u AS (UPDATE commands SET"
        " created_at = timestamptz '2026-01-01' + make_interval(mins => substr(request_id, 5)::int),"
        " delivered_at = timestamptz '2026-01-01' + make_interval(mins => substr(request_id, 5)::int)"
        " + make_interval(secs => substr(request_id, 5)::int + 1)"
        " RETURNING 1) SELECT count(*) FROM u"
    )
    r = await api.client.get("/v1/devices/phone-1", headers=api.op())
    push = (await r.json())["push"]
    delays = sorted(range(6, 26))
    assert push["samples"] == 20
    assert abs(push["delivery_p50_seconds"] - (delays[9] + delays[10]) / 2) < 1e-6
    assert abs(push["delivery_p95_seconds"] - (delays[18] + 0.05 * (delays[19] - delays[18]))) < 1e-6


async def test_delivery_latency_feeds_the_fleet_histogram(api: Api) -> None:
    token = await api.enroll("phone-1")
    await dispatch(api, "req-1", "phone-1")
    await ack(api, token, "req-1", status="delivered")
    await ack(api, token, "req-1", status="delivered")  # repeated: not measured again
    metrics = api.app[SERVICES].metrics
    assert metrics.registry.get_sample_value("telemetry_command_delivery_seconds_count") == 1
    r = await api.client.get("/metrics")
    assert "telemetry_command_delivery_seconds_bucket" in await r.text()
