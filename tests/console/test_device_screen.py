"""The device screen in a real browser: its event timeline and charts equal the API's answers,
and an admin revokes and reinstates a device through the API's own path (a viewer cannot)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import pytest

from tests.console.browser import api_json, beat
from tests.support.console import ADMIN, ADMIN_PASSWORD, VIEWER, VIEWER_PASSWORD

XSS_IMG = '"><img src=x onerror="window.__xss=1">'


def _iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


@pytest.fixture
async def device(api) -> dict[str, Any]:
    """phone-1 with heartbeats in its last two hours (its app version changing to markup: both
    hours are read from the raw rows, newer than the hourly rollup can be), and phone-2
    enrolled but never seen."""
    token = await api.enroll("phone-1")
    await api.enroll("phone-2")
    now = datetime.now(UTC)
    for hours_ago, battery, version in ((1, 80, "3.1.0"), (0.5, 55, "3.1.0"), (0, 40, XSS_IMG)):
        ts = _iso(now - timedelta(hours=hours_ago))
        await beat(api, token, ts=ts, status="ok", battery_pct=battery, app_version=version)
    return {"token": token, "now": now}


async def test_the_timeline_and_charts_show_what_the_api_answers(browser, api, device):
    await browser.log_in(VIEWER, VIEWER_PASSWORD)
    await browser.get("/console/devices/phone-1?span=7d&bucket=1h")
    events = await api_json(api, "/v1/devices/phone-1/events?limit=20")
    shown = await browser.texts("#events .event-type")
    assert shown == [e["event_type"].replace("_", " ") for e in events["events"]]
    assert "app version changed" in shown and "enrolled" in shown
    # The charts' points are the history endpoint's buckets over the same span.
    start = quote(_iso(device["now"] - timedelta(days=7)))
    history = await api_json(api, f"/v1/devices/phone-1/history?bucket=1h&from={start}")
    assert len(history["buckets"]) == 2
    plotted = await browser.script(
        "const c = window.consoleCharts['chart-battery']; return [c.data[0], c.data[2]]"
    )
    starts = [datetime.fromisoformat(b["start"]).timestamp() for b in history["buckets"]]
    assert plotted == [starts, [b["battery_avg"] for b in history["buckets"]]]
    status_series = await browser.script(
        "const c = window.consoleCharts['chart-status'];"
        "return c.series.slice(1).map((s, i) => [s.label, c.data[i + 1]])"
    )
    assert status_series == [["ok", [b["status_counts"]["ok"] for b in history["buckets"]]]]
    # Daily buckets: the same heartbeats in at most two days.
    await browser.select("#h-bucket", "1d")
    await browser.click("#h-apply")
    daily = await api_json(api, f"/v1/devices/phone-1/history?bucket=1d&from={start}")
    assert await browser.script("return window.consoleCharts['chart-battery'].data[0].length") == len(
        daily["buckets"]
    )
    # The app version change's details hold markup: shown as text, nothing injected or run.
    details = json.loads(await browser.text("#events li:first-child .details"))
    assert details == {"from": "3.1.0", "to": XSS_IMG}
    assert await browser.script("return window.__xss === undefined")
    assert await browser.script("return document.querySelectorAll('main img, main script').length") == 0
    assert not [e for e in await browser.console() if "Content Security Policy" in e["message"]]


async def test_a_device_never_seen_says_the_charts_wait_for_its_first_heartbeat(browser, api, device):
    await browser.log_in(VIEWER, VIEWER_PASSWORD)
    await browser.get("/console/devices/phone-2")
    assert "No heartbeat in this span" in await browser.text("#no-history")
    assert await browser.texts("#events .event-type") == ["enrolled"]
    await browser.get("/console/devices/phone-2?span=sideways")
    assert await browser.text("#error-field") == "span"


async def test_an_admin_revokes_and_reinstates_through_the_apis_path(browser, api, device):
    await browser.log_in(ADMIN, ADMIN_PASSWORD)
    await browser.get("/console/devices/phone-1")
    assert await browser.text("#credential") == "active"
    await browser.click("#revoke")
    assert await browser.text("#changed") == "Credential: revoked."
    assert await browser.text("#credential") == "banned"
    state = await api_json(api, "/v1/devices/phone-1")
    assert (state["credential_revoked"], state["banned"]) == (True, True)
    # The device's credential stops working at once (this instance forgot it).
    r = await api.client.post(
        "/v1/heartbeats", json={"status": "ok"}, headers={"Authorization": f"Bearer {device['token']}"}
    )
    assert r.status == 401
    assert (await browser.texts("#events .event-type"))[0] == "credential revoked"
    await browser.click("#reinstate")
    assert await browser.text("#changed") == "Credential: reinstated."
    state = await api_json(api, "/v1/devices/phone-1")
    assert (state["credential_revoked"], state["banned"]) == (True, False)
    events = await api_json(api, "/v1/devices/phone-1/events?limit=2")
    assert [e["event_type"] for e in events["events"]] == ["reinstated", "credential_revoked"]
    assert events["events"][0]["details"] == {"by": ADMIN}


async def test_a_viewer_sees_no_revoke_button_and_a_forged_revoke_is_refused(browser, api, device):
    await browser.log_in(VIEWER, VIEWER_PASSWORD)
    await browser.get("/console/devices/phone-1")
    assert await browser.count("#revoke, #reinstate, main form[method=post]") == 0
    status = await browser.post_with_page_csrf("/console/devices/phone-1/revoke", {})
    assert status == 403
    state = await api_json(api, "/v1/devices/phone-1")
    assert (state["credential_revoked"], state["banned"]) == (False, False)
