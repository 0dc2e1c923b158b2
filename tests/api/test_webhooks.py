"""`/v1/webhooks`: the secret answered once and never again, reads for viewers and changes for
admins, every refused URL or event type a 422 naming the field, unknown ids 404 naming
`webhook_id`. Private receivers are refused here (the default); deliveries themselves, to a
local receiver, are tests/webhooks/test_worker.py."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from tests.api.test_operators import new_operator
from tests.support.app import Api

# A public address literal: allowed without asking DNS (nothing is sent to it here).
PUBLIC = "https://93.184.215.14/hook"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def create(api: Api, **body: Any) -> dict[str, Any]:
    r = await api.client.post("/v1/webhooks", json=body, headers=api.op())
    assert r.status == 201, await r.text()
    return await r.json()


async def test_a_subscription_answers_its_secret_once_and_no_read_shows_it_again(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    created = await create(api, url=PUBLIC, event_types=["device.went_offline"], description="ops")
    secret = created["secret"]
    assert secret.startswith("whsec_") and len(secret) > 30
    hook = created["webhook"]
    assert (hook["url"], hook["event_types"], hook["description"]) == (PUBLIC, ["device.went_offline"], "ops")
    assert (hook["enabled"], hook["pending"], hook["failed"], hook["dead"], hook["delivered"]) == (
        True,
        0,
        0,
        0,
        0,
    )
    sub = created["id"]
    answers = [
        await api.client.get("/v1/webhooks", headers=api.op()),
        await api.client.get(f"/v1/webhooks/{sub}", headers=api.op()),
        await api.client.get(f"/v1/webhooks/{sub}/deliveries", headers=api.op()),
        await api.client.patch(f"/v1/webhooks/{sub}", json={"description": "x"}, headers=api.op()),
        await api.client.post(f"/v1/webhooks/{sub}/replay", json={"from_event_id": 1}, headers=api.op()),
    ]
    for r in answers:
        text = await r.text()
        assert r.status == 200, text
        assert secret not in text and "secret" not in text
    assert secret not in caplog.text
    assert [h["id"] for h in (await answers[0].json())["webhooks"]] == [sub]
    assert (await answers[2].json()) == {"deliveries": [], "next_before": None}
    # The stored secret is the one answered (deliveries are signed with it).
    assert await api.count("SELECT count(*) FROM webhook_subscriptions WHERE secret = $1", secret) == 1


async def test_patch_changes_only_what_it_names_and_delete_removes_it(api: Api) -> None:
    sub = (await create(api, url=PUBLIC, description="keep"))["id"]
    r = await api.client.patch(f"/v1/webhooks/{sub}", json={"enabled": False}, headers=api.op())
    hook = await r.json()
    assert (hook["enabled"], hook["disabled_reason"], hook["description"], hook["event_types"]) == (
        False,
        "disabled by an operator",
        "keep",
        None,
    )
    types = ["command.failed", "command.expired"]
    r = await api.client.patch(
        f"/v1/webhooks/{sub}", json={"enabled": True, "event_types": types}, headers=api.op()
    )
    hook = await r.json()
    assert (hook["enabled"], hook["disabled_reason"], hook["event_types"]) == (True, None, types)
    r = await api.client.patch(f"/v1/webhooks/{sub}", json={"event_types": None}, headers=api.op())
    assert (await r.json())["event_types"] is None  # every type again
    r = await api.client.delete(f"/v1/webhooks/{sub}", headers=api.op())
    assert r.status == 200 and (await r.json()) == {"id": sub, "deleted": True}
    for method in ("GET", "PATCH", "DELETE"):
        r = await api.client.request(method, f"/v1/webhooks/{sub}", json={}, headers=api.op())
        assert r.status == 404 and (await r.json())["error"]["field"] == "webhook_id", method


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"url": "ftp://example.com/hook"}, "url"),
        ({"url": "https://user:pw@93.184.215.14/hook"}, "url"),
        ({"url": "https://93.184.215.14/" + "a" * 2048}, "url"),
        ({"url": "http:///hook"}, "url"),
        ({"url": "http://127.0.0.1:8080/hook"}, "url"),
        ({"url": "http://169.254.169.254/latest/meta-data"}, "url"),
        ({"url": "http://10.1.2.3/hook"}, "url"),
        ({"url": "http://[::1]/hook"}, "url"),
        ({"url": "http://[::ffff:127.0.0.1]/hook"}, "url"),
        ({"url": "http://localhost/hook"}, "url"),
        ({"url": PUBLIC, "event_types": ["device.went_offline", "device.exploded"]}, "event_types[1]"),
        ({"url": PUBLIC, "event_types": []}, "event_types"),
        ({"url": PUBLIC, "description": "d" * 257}, "description"),
        ({"url": PUBLIC, "secret": "mine"}, "secret"),
        ({}, "url"),
    ],
)
async def test_refused_subscriptions_are_422_naming_the_field(
    api: Api, body: dict[str, Any], field: str
) -> None:
    r = await api.client.post("/v1/webhooks", json=body, headers=api.op())
    error = (await r.json())["error"]
    assert (r.status, error["field"]) == (422, field), error
    assert "pw" not in error["message"]  # credentials are never quoted back
    assert await api.count("SELECT count(*) FROM webhook_subscriptions") == 0


async def test_bad_ids_statuses_and_replays_are_refused_naming_them(api: Api) -> None:
    sub = (await create(api, url=PUBLIC))["id"]
    # Malformed ids break the declared parameter's rules (422, as every path parameter); a
    # well-formed one that names nothing is 404.
    for path, status in (
        ("/v1/webhooks/0", 422),
        ("/v1/webhooks/abc", 422),
        ("/v1/webhooks/99999999999999999999", 422),
        ("/v1/webhooks/77", 404),
    ):
        r = await api.client.get(path, headers=api.op())
        assert (r.status, (await r.json())["error"]["field"]) == (status, "webhook_id"), path
    r = await api.client.get(f"/v1/webhooks/{sub}/deliveries?status=delivered", headers=api.op())
    assert r.status == 422 and (await r.json())["error"]["field"] == "status"
    r = await api.client.patch(f"/v1/webhooks/{sub}", json={"event_types": ["nope"]}, headers=api.op())
    assert r.status == 422 and (await r.json())["error"]["field"] == "event_types[0]"
    for body, field in (
        ({}, "from_event_id"),
        ({"from_event_id": 1, "delivery_ids": [1]}, "from_event_id"),
        ({"from_event_id": 0}, "from_event_id"),
        ({"delivery_ids": []}, "delivery_ids"),
    ):
        r = await api.client.post(f"/v1/webhooks/{sub}/replay", json=body, headers=api.op())
        assert r.status == 422 and (await r.json())["error"]["field"] == field, body
    r = await api.client.post(f"/v1/webhooks/{sub}/replay", json={"delivery_ids": [5, 6]}, headers=api.op())
    assert (await r.json()) == {"replayed": 0, "next_event_id": None, "unknown_delivery_ids": [5, 6]}


async def test_a_viewer_reads_subscriptions_and_is_refused_every_change(api: Api) -> None:
    sub = (await create(api, url=PUBLIC))["id"]
    viewer = bearer(await new_operator(api, "vera", role="viewer"))
    for path in ("/v1/webhooks", f"/v1/webhooks/{sub}", f"/v1/webhooks/{sub}/deliveries"):
        assert (await api.client.get(path, headers=viewer)).status == 200, path
    for method, path, body in (
        ("POST", "/v1/webhooks", {"url": PUBLIC}),
        ("PATCH", f"/v1/webhooks/{sub}", {"enabled": False}),
        ("DELETE", f"/v1/webhooks/{sub}", None),
        ("POST", f"/v1/webhooks/{sub}/test", None),
        ("POST", f"/v1/webhooks/{sub}/replay", {"from_event_id": 1}),
    ):
        r = await api.client.request(method, path, json=body, headers=viewer)
        assert r.status == 403 and (await r.json())["error"]["code"] == "forbidden", (method, path)
    assert await api.count("SELECT count(*) FROM webhook_subscriptions WHERE enabled") == 1


async def test_the_endpoints_are_in_the_openapi_document(api: Api) -> None:
    doc = await (await api.client.get("/openapi.json")).json()
    assert set(doc["paths"]["/v1/webhooks/{webhook_id}"]) == {"get", "patch", "delete"}
    for path in ("/v1/webhooks", "/v1/webhooks/{webhook_id}/test", "/v1/webhooks/{webhook_id}/replay"):
        assert "post" in doc["paths"][path]
    assert "secret" in doc["components"]["schemas"]["WebhookCreated"]["required"]
    assert "secret" not in doc["components"]["schemas"]["Webhook"]["properties"]
