"""Every console route, walked from the app's router: without a session each page sends you to
the login, and every write refuses a viewer (403) with nothing done."""

from __future__ import annotations

import re

from tests.support.console import VIEWER, VIEWER_PASSWORD, csrf_of, log_in

OPEN = {"/console/login", "/console/logout"}


def _console_routes(app) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    routes = []
    for route in app.router.routes():
        path = route.resource.canonical if route.resource is not None else ""
        if path.startswith("/console/") and not path.startswith("/console/static") and path not in OPEN:
            routes.append((route.method, re.sub(r"\{[^}]+\}", "phone-1", path)))
    return routes


async def test_every_page_needs_a_session_and_every_write_refuses_a_viewer(api, operators):
    await api.enroll("phone-1")
    routes = _console_routes(api.app)
    writes = [path for method, path in routes if method == "POST"]
    assert len(writes) >= 5  # dispatch (device, commands), revoke, reinstate, mint
    for method, path in routes:
        if method == "GET":
            r = await api.client.get(path, allow_redirects=False)
            assert (r.status, r.headers.get("Location")) == (303, "/console/login"), path
    status, _ = await log_in(api.client, VIEWER, VIEWER_PASSWORD)
    assert status == 303
    csrf = csrf_of(await (await api.client.get("/console/")).text())
    written = (
        "SELECT (SELECT count(*) FROM commands) + (SELECT count(*) FROM enrollment_tokens)"
        " + (SELECT count(*) FROM devices WHERE banned_at IS NOT NULL)"
        " + (SELECT count(*) FROM bulk_dispatches)"
    )
    before = await api.count(written)
    for path in writes:
        form = {"csrf": csrf, "action": "lock", "device_id": "phone-1", "all": "on"}
        r = await api.client.post(path, data=form, allow_redirects=False)
        assert r.status == 403, path
        assert "can only read" in await r.text()
    after = await api.count(written)
    assert after == before
