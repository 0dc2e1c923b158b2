"""Logging in to the console over HTTP as the console tests do: the seeded operators' names and
passwords, the CSRF field of a page, and the login form posted."""

from __future__ import annotations

import re

from aiohttp.test_utils import TestClient

ADMIN, VIEWER = "alice", "bob"
ADMIN_PASSWORD, VIEWER_PASSWORD = "correct horse battery", "viewer staple 1234"
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def csrf_of(html: str) -> str:
    found = _CSRF.search(html)
    assert found is not None, "the page has no CSRF field"
    return found.group(1)


async def log_in(client: TestClient, name: str, password: str, **headers: str) -> tuple[int, str]:
    """Fetch the login form, post it; (status, Set-Cookie of the answer)."""
    form = await client.get("/console/login", headers=headers)
    assert form.status == 200
    # Sent explicitly: behind a proxy saying https the cookie is Secure, which the test
    # client (plain HTTP) would not send back by itself.
    login_cookie = form.cookies["telemetry_console_login"].value
    r = await client.post(
        "/console/login",
        data={"csrf": csrf_of(await form.text()), "username": name, "password": password},
        cookies={"telemetry_console_login": login_cookie},
        allow_redirects=False,
        headers=headers,
    )
    return r.status, "\n".join(r.headers.getall("Set-Cookie", []))
