"""The Commands and Rollouts screens and the live overview in a real browser, on one seeded
fleet: every number equals the API's answer, markup renders as text, a viewer has no write
control (and a forged post is refused), and the overview follows the event stream."""

from __future__ import annotations

from typing import Any

import pytest

from tests.console.browser import api_json, beat
from tests.support.console import ADMIN, ADMIN_PASSWORD, VIEWER, VIEWER_PASSWORD

XSS_IMG = '"><img src=x onerror="window.__xss=1">'
BUILD = "ci-77"


async def _post(api, path: str, body: dict[str, Any], token: str | None = None) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else api.op()
    r = await api.client.post(path, json=body, headers=headers)
    assert r.status in (200, 201), await r.text()
    return await r.json()


@pytest.fixture
async def seeded(api) -> dict[str, str]:
    """Four devices; a build two of them downloaded and one installed; commands: a lock pending
    for an hour (stuck), a ring just dispatched, a ring executed, one whose action is markup."""
    tokens = {f"d-{i}": await api.enroll(f"d-{i}") for i in range(4)}
    for token in tokens.values():
        await beat(api, token, status="ok", app_version="1.0.0", battery_pct=60)
    await _post(
        api,
        "/v1/apk-versions",
        {
            "package_name": "com.example.agent",
            "version_code": 77,
            "version_name": XSS_IMG,
            "build_id": BUILD,
            "sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
            "size_bytes": 1234,
        },
    )
    for device_id in ("d-0", "d-1"):
        await _post(api, "/v1/apk-downloads", {"build_id": BUILD, "outcome": "completed"}, tokens[device_id])
    await _post(api, "/v1/apk-downloads", {"build_id": BUILD, "outcome": "failed"}, tokens["d-2"])
    await _post(api, "/v1/apk-installations", {"build_id": BUILD, "status": "installed"}, tokens["d-0"])
    for request_id, device_id, action in (
        ("old-lock", "d-0", "lock"),
        ("ring-1", "d-1", "ring"),
        ("ring-2", "d-2", "ring"),
        ("xss", "d-3", XSS_IMG),
    ):
        body = {"request_id": request_id, "device_id": device_id, "action": action}
        await _post(api, "/v1/dispatches", body)
    await _post(api, "/v1/dispatches/ring-2/ack", {"status": "executed"}, tokens["d-2"])
    # An hour old: past TELEMETRY_COMMAND_STUCK_SECONDS, so stuck.
    await api.count(
        "WITH c AS (UPDATE commands SET created_at = now() - interval '1 hour' WHERE request_id = 'old-lock'"
        " RETURNING 1) SELECT count(*) FROM c"
    )
    return tokens


async def _rows(browser) -> list[str]:
    return await browser.script(
        "return [...document.querySelectorAll('#commands tbody tr')].map(r => r.dataset.requestId)"
    )


async def test_the_commands_screen_filters_and_highlights_the_stuck_ones(browser, api, seeded):
    await browser.log_in(VIEWER, VIEWER_PASSWORD)
    await browser.get("/console/commands")
    assert sorted(await _rows(browser)) == ["old-lock", "ring-1", "ring-2", "xss"]
    # Stuck is what GET /v1/commands lists by default (pending past the stuck age).
    stuck = [c["request_id"] for c in (await api_json(api, "/v1/commands"))["commands"]]
    assert stuck == ["old-lock"]
    assert (
        await browser.script(
            "return [...document.querySelectorAll('#commands tr.stuck')].map(r => r.dataset.requestId)"
        )
        == stuck
    )
    # Status and age: the API's answer to the same filter.
    await browser.select("#f-status", "pending")
    await browser.fill("#f-older", "0")
    await browser.click("#f-apply")
    pending = (await api_json(api, "/v1/commands?status=pending&older_than=0"))["commands"]
    assert sorted(await _rows(browser)) == sorted(c["request_id"] for c in pending)
    assert len(pending) == 3
    await browser.get("/console/commands?action=ring")
    assert sorted(await _rows(browser)) == ["ring-1", "ring-2"]
    await browser.get("/console/commands?status=expired")
    assert "No command matches" in await browser.text("#no-commands")
    await browser.get("/console/commands?older_than=soon")
    assert await browser.text("#error-field") == "older_than"
    # Markup in an action renders as text; a viewer has no dispatch form and is refused one.
    await browser.get("/console/commands?action=" + XSS_IMG.replace('"', "%22").replace(" ", "%20"))
    assert await browser.texts("#commands td.action") == [XSS_IMG]
    assert await browser.script("return window.__xss === undefined")
    assert await browser.count("#dispatch-form, main form[method=post]") == 0
    status = await browser.post_with_page_csrf(
        "/console/commands/dispatch", {"device_id": "d-1", "action": "wipe"}
    )
    assert status == 403
    assert await api.count("SELECT count(*) FROM commands WHERE command = 'wipe'") == 0


async def test_a_dispatch_from_the_commands_screen_appears_in_the_api(browser, api, seeded):
    await browser.log_in(ADMIN, ADMIN_PASSWORD)
    await browser.get("/console/commands")
    await browser.fill("#c-device", "d-3")
    await browser.fill("#c-action", "locate")
    await browser.click("#c-send")
    request_id = await browser.text("#dispatched code")
    command = await api_json(api, f"/v1/commands/{request_id}")
    assert (command["device_id"], command["command"], command["status"]) == ("d-3", "locate", "pending")
    assert request_id in await _rows(browser)
    # Its push as the API's command read has it.
    push = await browser.text(f"#commands tr[data-request-id='{request_id}'] td.push")
    assert push == command["push"]["status"].replace("_", " ")
    # A device that does not exist: the API's 404, naming the field.
    await browser.fill("#c-device", "nobody")
    await browser.fill("#c-action", "locate")
    await browser.click("#c-send")
    assert await browser.text("#error-field") == "device_id"


async def test_a_bulk_from_the_commands_screen_shows_its_progress_as_the_api_counts_it(browser, api, seeded):
    await browser.log_in(ADMIN, ADMIN_PASSWORD)
    await browser.get("/console/commands")
    assert await browser.count("#no-bulks") == 1
    await browser.fill("#b-action", "ring")
    await browser.fill("#b-q", "d-")
    await browser.click("#b-send")
    path = await browser.path()
    bulk_id = int(path.rsplit("/", 1)[1])
    assert path == f"/console/commands/bulk/{bulk_id}"
    # The page refreshes itself while the commands are being created.
    await browser.wait_for(lambda: browser.driver.find_element("id", "bulk-status").text == "created", 15)
    view = await api_json(api, f"/v1/dispatches/bulk/{bulk_id}")
    assert view["bulk"]["target_count"] == 4 and view["bulk"]["selector"] == {"filter": {"q": "d-"}}
    assert await browser.text("#bulk-targets") == "4"
    assert await browser.text("#bulk-created") == str(view["counts"]["created"]) == "4"
    shown = dict(
        zip(await browser.texts("#bulk-by-status th"), await browser.texts("#bulk-by-status td"), strict=True)
    )
    assert shown == {k: str(v) for k, v in view["counts"]["by_status"].items()} == {"pending": "4"}
    await browser.click("#bulk-cancel")
    assert await browser.text("#bulk-cancelled") == "Cancelled 4 open commands."
    assert await browser.text("#bulk-status") == "cancelled"
    view = await api_json(api, f"/v1/dispatches/bulk/{bulk_id}")
    assert view["counts"]["by_status"] == {"cancelled": 4}
    await browser.get("/console/commands")
    assert await browser.text(f"#bulks tr[data-bulk-id='{bulk_id}'] td.status") == "cancelled"
    # An empty selection: the API's 422, naming the field.
    await browser.fill("#b-action", "ring")
    await browser.click("#b-send")
    assert await browser.text("#error-field") == "selector.filter"


async def test_the_rollouts_screen_shows_the_apis_funnel(browser, api, seeded):
    await browser.log_in(VIEWER, VIEWER_PASSWORD)
    await browser.get("/console/rollouts")
    funnel = await api_json(api, f"/v1/apk-versions/{BUILD}/rollout")
    assert (funnel["downloads"]["completed"], funnel["downloads"]["failed"]) == (2, 1)
    assert funnel["installations"]["installed"] == 1

    async def step(name: str, column: str) -> int:
        return int(await browser.text(f"#build-{BUILD} tr[data-step={name}] td.{column}"))

    assert await step("download", "reached") == funnel["downloads"]["completed"]
    assert await step("download", "failed") == funnel["downloads"]["failed"]
    assert await step("install", "reached") == funnel["installations"]["installed"]
    assert await step("install", "failed") == funnel["installations"]["failed"]
    assert await step("verified", "reached") == funnel["installations"]["verified"]
    assert XSS_IMG in await browser.text(f"#build-{BUILD} h2")  # the version name, as text
    assert await browser.script("return document.querySelectorAll('main img').length") == 0
    # The overview lists the build among the active rollouts with the same numbers.
    await browser.get("/console/")
    row = await browser.script(
        f"return [...document.querySelector('#active-rollouts tr[data-build=\"{BUILD}\"]').cells]"
        ".map(c => c.textContent)"
    )
    assert row == [BUILD, XSS_IMG, "2", "1", str(funnel["installations"]["verified"]), "1"]


async def test_the_overview_follows_the_event_stream(browser, api, seeded):
    await browser.log_in(VIEWER, VIEWER_PASSWORD)
    live = "return document.body.dataset.live"
    await browser.wait_for(lambda: browser.driver.execute_script(live) == "open")
    assert int(await browser.text("#count-revoked")) == 0
    r = await api.client.post("/v1/devices/d-3/revoke", headers=api.op())
    assert r.status == 200
    # The event arrives on the stream and the counts are fetched once the next snapshot is due
    # (5 s), before the 10 s poll would.
    await browser.wait_for(
        lambda: browser.driver.execute_script("return window.consoleLiveEvents || 0") >= 1, 5
    )
    revoked = "return document.querySelector('#count-revoked').textContent"
    await browser.wait_for(lambda: browser.driver.execute_script(revoked) == "1", 8)
    summary = await api_json(api, "/v1/fleet/summary")
    assert summary["presence"]["revoked"] == 1
    # No day of fleet history yet on a fresh database: the trend says so, as the API does.
    assert (await api_json(api, "/v1/fleet/history?bucket=1d"))["buckets"] == []
    assert "No day of fleet history yet" in await browser.text("#no-trend")


@pytest.mark.parametrize("width", [1280, 390])
async def test_the_new_screens_fit_the_width(browser, api, seeded, width):
    await browser.log_in(ADMIN, ADMIN_PASSWORD)
    await browser.assert_fits(
        width, ("/console/commands", "/console/rollouts", "/console/", "/console/devices/d-0")
    )
