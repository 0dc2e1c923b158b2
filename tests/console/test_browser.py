"""The console in a real browser (headless Chromium via Selenium) against the service on the
test cluster with a seeded fleet: what an operator sees equals what the API answers."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from tests.console.browser import api_json as _api
from tests.console.browser import beat as _beat
from tests.support.console import ADMIN, ADMIN_PASSWORD, VIEWER, VIEWER_PASSWORD

XSS_SCRIPT = "<script>window.__xss='script'</script>"
XSS_IMG = '"><img src=x onerror="window.__xss=1">'
DEVICES = 55  # more than one page of the console's list (50)


@pytest.fixture
async def fleet(api) -> dict[str, str]:
    """55 devices: 10 ok on 3.1.0, 5 charging on 3.2.0, one whose status and app version are
    markup, the rest never seen. Returns the device tokens."""
    tokens = {}
    for i in range(DEVICES):
        tokens[f"dev-{i:03d}"] = await api.enroll(f"dev-{i:03d}")
    beats = []
    for i in range(10):
        beats.append(_beat(api, tokens[f"dev-{i:03d}"], status="ok", app_version="3.1.0", battery_pct=i * 10))
    for i in range(10, 15):
        beats.append(
            _beat(api, tokens[f"dev-{i:03d}"], status="charging", app_version="3.2.0", battery_pct=12)
        )
    beats.append(
        _beat(
            api,
            tokens["dev-015"],
            status=XSS_SCRIPT,
            app_version=XSS_IMG,
            battery_pct=90,
            extra={"x": XSS_IMG},
        )
    )
    await asyncio.gather(*beats)
    return tokens


async def test_log_in_and_out(browser, api):
    await browser.log_in(ADMIN, ADMIN_PASSWORD)
    assert await browser.path() == "/console/"
    assert await browser.text("h1") == "Fleet overview"
    assert f"{ADMIN} (admin)" in await browser.text(".who")
    await browser.click("header form button")
    assert await browser.path() == "/console/login"
    await browser.get("/console/devices")
    assert await browser.path() == "/console/login"  # the session is over


async def test_a_wrong_password_stays_on_the_login_with_an_error(browser, api):
    await browser.log_in(ADMIN, "not the password")
    assert await browser.text("#login-error") == "Wrong name or password."
    await browser.get("/console/")
    assert await browser.path() == "/console/login"


async def test_the_login_works_from_the_keyboard_alone(browser, api):
    from selenium.webdriver.common.keys import Keys

    await browser.get("/console/login")
    # The name field has the focus on arrival; Tab reaches the password, Enter submits.
    active = await browser.script("return document.activeElement.id")
    assert active == "username"
    await browser.run(browser.driver.switch_to.active_element.send_keys, ADMIN, Keys.TAB)
    await browser.run(browser.driver.switch_to.active_element.send_keys, ADMIN_PASSWORD, Keys.ENTER)
    await browser.wait_for(lambda: browser.driver.current_url.endswith("/console/"))


async def test_session_expiry_sends_you_back_to_the_login(browser, api):
    await browser.log_in(ADMIN, ADMIN_PASSWORD)
    assert await browser.path() == "/console/"
    await api.count(
        "WITH e AS (UPDATE sessions SET last_used_at = now() - interval '2 hours'"
        " WHERE kind = 'console' RETURNING 1) SELECT count(*) FROM e"
    )
    await browser.get("/console/devices")
    assert await browser.path() == "/console/login"


async def test_the_overview_shows_the_api_summary(browser, api, fleet):
    await browser.log_in(VIEWER, VIEWER_PASSWORD)
    summary = await _api(api, "/v1/fleet/summary")
    assert int(await browser.text("#count-total")) == summary["total"] == DEVICES
    for presence, n in summary["presence"].items():
        assert int(await browser.text(f"#count-{presence}")) == n
    assert summary["presence"]["never_seen"] == DEVICES - 16
    shown_versions = await browser.script(
        "return [...document.querySelectorAll('#app-versions tbody tr')]"
        ".map(r => [...r.cells].map(c => c.textContent))"
    )
    expected = [[v["app_version"], str(v["devices"])] for v in summary["app_versions"]]
    assert shown_versions == [*expected, ["unknown", str(summary["unknown_app_version"])]]
    for bucket, n in summary["battery"].items():
        assert await browser.script(
            f"return document.querySelector('#battery td[data-bucket=\"{bucket}\"]').textContent"
        ) == str(n)
    assert await browser.text("#no-stuck") == "No stuck command."
    assert (await browser.text("#retention-badge")).startswith("retention:")


async def test_the_device_list_pages_and_filters_like_the_api(browser, api, fleet):
    await browser.log_in(VIEWER, VIEWER_PASSWORD)
    await browser.get("/console/devices")
    seen: list[str] = []
    while True:
        seen += await browser.texts("#devices .device-link")
        if not await browser.count("#next-page"):
            break
        await browser.click("#next-page")
    listed = await _api(api, "/v1/devices?limit=1000")
    assert seen == [d["device_id"] for d in listed["devices"]]
    assert len(seen) == DEVICES  # no device skipped or repeated across pages

    await browser.get("/console/devices")
    await browser.select("#f-presence", "online")
    await browser.fill("#f-app-version", "3.2.0")
    await browser.click("#f-apply")
    shown = await browser.texts("#devices .device-link")
    api_answer = await _api(api, "/v1/devices?presence=online&app_version=3.2.0&limit=1000")
    assert shown == [d["device_id"] for d in api_answer["devices"]] and len(shown) == 5

    await browser.get("/console/devices?battery_below=25")
    api_answer = await _api(api, "/v1/devices?battery_below=25&limit=1000")
    assert await browser.texts("#devices .device-link") == [d["device_id"] for d in api_answer["devices"]]

    await browser.get("/console/devices?q=nothing-like-this")
    assert "No device matches" in await browser.text("#no-match")
    await browser.get("/console/devices?presence=sideways")
    assert await browser.text("#error-field") == "presence"
    assert await browser.text("#request-id")


async def test_a_dispatch_made_in_the_browser_appears_in_the_api(browser, api, fleet):
    await browser.log_in(ADMIN, ADMIN_PASSWORD)
    await browser.get("/console/devices/dev-003")
    assert "No command yet" in await browser.text("#no-commands")
    await browser.fill("#d-action", "ring")
    await browser.fill("#d-payload", '{"seconds": 30}')
    await browser.click("#d-send")
    request_id = await browser.text("#dispatched code")
    commands = (await _api(api, "/v1/commands?older_than=0"))["commands"]
    assert [(c["request_id"], c["device_id"], c["command"], c["payload"]) for c in commands] == [
        (request_id, "dev-003", "ring", {"seconds": 30})
    ]
    assert await browser.texts("#commands td.action") == ["ring"]


async def test_a_viewer_sees_no_write_control_and_a_forged_post_is_refused(browser, api, fleet):
    await browser.log_in(VIEWER, VIEWER_PASSWORD)
    await browser.get("/console/devices/dev-003")
    assert await browser.count("#dispatch-form") == 0
    assert await browser.count("main form[method=post]") == 0
    # The viewer's own session and CSRF token (the logout form's), posted by hand.
    status = await browser.post_with_page_csrf("/console/devices/dev-003/dispatch", {"action": "lock"})
    assert status == 403
    assert await api.count("SELECT count(*) FROM commands") == 0


async def test_a_form_without_its_csrf_token_is_refused(browser, api, fleet):
    await browser.log_in(ADMIN, ADMIN_PASSWORD)
    await browser.get("/console/devices/dev-003")
    await browser.script("document.querySelector('#dispatch-form input[name=csrf]').remove()")
    await browser.fill("#d-action", "lock")
    await browser.click("#d-send")
    assert "CSRF" in await browser.text("#error-message")
    assert await browser.text("#error-field") == "csrf"
    assert await api.count("SELECT count(*) FROM commands") == 0


async def test_markup_in_status_app_version_and_commands_renders_as_text(browser, api, fleet):
    r = await api.client.post(
        "/v1/dispatches",
        json={"request_id": "xss-1", "device_id": "dev-015", "action": XSS_IMG, "payload": {"n": XSS_SCRIPT}},
        headers=api.op(),
    )
    assert r.status == 201, await r.text()
    await browser.log_in(ADMIN, ADMIN_PASSWORD)
    await browser.get("/console/")
    statuses = await browser.texts("#statuses th")
    assert XSS_SCRIPT in statuses
    assert XSS_IMG in await browser.texts("#app-versions td a")
    await browser.get("/console/devices?q=dev-015")
    assert await browser.texts("#devices td.status") == [XSS_SCRIPT]
    assert await browser.texts("#devices td.app-version") == [XSS_IMG]
    await browser.get("/console/devices/dev-015")
    assert await browser.text("#status") == XSS_SCRIPT
    assert await browser.text("#app-version") == XSS_IMG
    assert await browser.texts("#commands td.action") == [XSS_IMG]
    assert XSS_SCRIPT in await browser.text("#commands td.payload")
    # Nothing ran: no marker, no dialog, no injected element, and no script the page's
    # Content-Security-Policy had to block (which would mean markup got through escaping).
    assert await browser.script("return window.__xss === undefined")
    assert not await browser.alert_open()
    assert await browser.script("return document.querySelectorAll('main img, main script').length") == 0
    entries = await browser.console()
    assert not [e for e in entries if "Content Security Policy" in e["message"] or "__xss" in e["message"]]


async def test_times_show_in_the_browsers_zone_with_utc_on_hover(browser, api, fleet):
    await browser.log_in(VIEWER, VIEWER_PASSWORD)
    await browser.get("/console/devices/dev-001")
    shown = await browser.script(
        "const t = document.querySelectorAll('time')[0];"
        "return [t.textContent, t.title, t.getAttribute('datetime')]"
    )
    text, title, iso = shown
    assert title.endswith(" UTC") and "UTC" not in text
    local = await browser.script(f"return new Date({iso!r}).toLocaleString()")
    assert text == local
    offset = await browser.script("return new Date().getTimezoneOffset()")
    assert offset == -330  # the browser runs in Asia/Kolkata


@pytest.mark.parametrize("width", [1280, 390])
async def test_every_screen_fits_the_width_without_sideways_scrolling(browser, api, fleet, width):
    await browser.log_in(ADMIN, ADMIN_PASSWORD)
    await browser.assert_fits(width, ("/console/", "/console/devices", "/console/devices/dev-015"))


async def test_the_overview_refreshes_itself(browser, api, fleet):
    await browser.log_in(VIEWER, VIEWER_PASSWORD)
    before = int(await browser.text("#count-online"))
    await _beat(api, fleet["dev-030"], status="ok", app_version="3.1.0", battery_pct=50)
    # The snapshot is at most 5 s old and the page polls every 10 s.
    await browser.wait_for(
        lambda: browser.driver.find_element("css selector", "#count-online").text == str(before + 1), 25
    )


@pytest.mark.skipif(
    not os.environ.get("CONSOLE_SCREENSHOTS"), reason="set CONSOLE_SCREENSHOTS=DIR to write them"
)
async def test_write_a_screenshot_of_each_screen(browser, api, fleet):
    """Not a check: PNGs of each screen at 1280 and 390 px into $CONSOLE_SCREENSHOTS, to look at."""
    out = Path(os.environ["CONSOLE_SCREENSHOTS"])
    await asyncio.to_thread(lambda: out.mkdir(parents=True, exist_ok=True))
    await browser.log_in(ADMIN, ADMIN_PASSWORD)
    screens = {
        "overview": "/console/",
        "devices": "/console/devices",
        "device": "/console/devices/dev-003",
        "commands": "/console/commands",
        "rollouts": "/console/rollouts",
        "admin": "/console/admin",
    }
    try:
        for width in (1280, 390):
            await browser.run(browser.driver.set_window_size, width, 1000)
            for name, path in screens.items():
                await browser.get(path)
                await browser.run(browser.driver.save_screenshot, str(out / f"{name}-{width}.png"))
    finally:
        await browser.run(browser.driver.set_window_size, 1280, 900)
    written = await asyncio.to_thread(lambda: list(out.glob("*.png")))
    assert len(written) >= 2 * len(screens)
