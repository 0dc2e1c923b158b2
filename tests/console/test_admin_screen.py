"""The Admin screen in a real browser: operators, enrollment tokens (a minted one shown once and
working), refused enrollments, webhooks and retention as the API and the CLI's functions answer
them; a viewer has no write control and a forged mint is refused."""

from __future__ import annotations

import asyncpg
import pytest

from service.api.credentials import list_operators
from service.db.time_series import TIME_SERIES_TABLES
from service.retention.health import assess
from tests.console.browser import api_json
from tests.support.console import ADMIN, ADMIN_PASSWORD, VIEWER, VIEWER_PASSWORD

XSS_IMG = '"><img src=x onerror="window.__xss=1">'


@pytest.fixture
async def refused(api) -> None:
    """One enrollment refused (an unknown token), one device enrolled."""
    r = await api.client.post("/v1/enroll", json={"enrollment_token": "et_not-a-token", "device_id": "x-1"})
    assert r.status == 401
    await api.enroll("x-2")


async def test_the_admin_screen_shows_what_the_api_and_the_cli_answer(
    browser, api, refused, mode, app_settings
):
    await browser.log_in(VIEWER, VIEWER_PASSWORD)
    await browser.get("/console/admin")
    conn = await asyncpg.connect(api.db_url)
    try:
        operators = await list_operators(conn)
        health = await assess(conn, mode, app_settings)
    finally:
        await conn.close()
    shown = await browser.script(
        "return [...document.querySelectorAll('#operators tbody tr')]"
        ".map(r => [...r.cells].map(c => c.textContent))"
    )
    assert shown == [[str(value) for value in row] for row in operators]
    assert [row[0] for row in shown] == [ADMIN, VIEWER]
    refusals = (await api_json(api, "/v1/enrollment-events?outcome=refused"))["events"]
    assert len(refusals) == 1
    assert await browser.script(
        "return [...document.querySelectorAll('table[data-outcome=refused] td.num')].map(c => c.textContent)"
    ) == [str(e["attempts"]) for e in refusals]
    assert (await api_json(api, "/v1/webhooks"))["webhooks"] == []
    assert "No webhook" in await browser.text("#no-webhooks")
    check = await browser.text("#retention-check")
    if health.ok:
        assert check == f"ok: every retention window holds ({mode} mode)"
    else:
        assert check.splitlines() == [f"PROBLEM {p}" for p in health.problems]
    tables = await browser.script(
        "return [...document.querySelectorAll('#retention-show [data-table]')].map(b => b.dataset.table)"
    )
    expected = [t.name for t in TIME_SERIES_TABLES] + ["fcm_dispatch_keys"]
    assert tables[: len(expected)] == expected
    # A viewer: no mint form, and a forged mint is refused.
    assert await browser.count("#mint-form, main form[method=post]") == 0
    status = await browser.post_with_page_csrf("/console/admin/enrollment-tokens", {})
    assert status == 403
    assert await api.count("SELECT count(*) FROM enrollment_tokens") == 1  # the fixture's only


async def test_a_token_minted_in_the_browser_is_shown_once_and_enrolls(browser, api):
    await browser.log_in(ADMIN, ADMIN_PASSWORD)
    await browser.get("/console/admin")
    assert "No enrollment token yet" in await browser.text("#no-tokens")
    await browser.fill("#t-device", "phone-9")
    await browser.fill("#t-note", XSS_IMG)
    await browser.click("#t-mint")
    token = await browser.text("#minted-token")
    r = await api.client.post("/v1/enroll", json={"enrollment_token": token, "device_id": "phone-9"})
    assert r.status == 201, await r.text()
    await browser.get("/console/admin")
    assert token not in await browser.script("return document.documentElement.outerHTML")
    row = await browser.script(
        "return [...document.querySelector('#enrollment-tokens tbody tr').cells].map(c => c.textContent)"
    )
    assert row[1:4] == ["phone-9", XSS_IMG, "1 / 1"] and row[6] == "spent"
    assert await browser.script("return document.querySelectorAll('main img').length") == 0
    # A bad value is the API's 422, naming the field.
    await browser.fill("#t-uses", "0")
    await browser.click("#t-mint")
    assert await browser.text("#error-field") == "max_uses"


@pytest.mark.parametrize("width", [1280, 390])
async def test_the_admin_screen_fits_the_width(browser, api, refused, width):
    await browser.run(browser.driver.set_window_size, width, 900)
    try:
        await browser.log_in(ADMIN, ADMIN_PASSWORD)
        await browser.get("/console/admin")
        overflow = await browser.script(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0, f"/console/admin is {overflow}px wider than {width}px"
    finally:
        await browser.run(browser.driver.set_window_size, 1280, 900)
