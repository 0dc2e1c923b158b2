"""Console sessions over plain HTTP: login, cookie flags, expiry, logout, the CLI ending them,
CSRF, roles, the login throttle and API tokens beside sessions."""

from __future__ import annotations

import hashlib
import ipaddress
from http.cookies import SimpleCookie

import asyncpg
import pytest

from service.admin import list_operators, revoke_operator, rotate_operator, set_password
from tests.support.cluster import settings_for
from tests.support.console import ADMIN, ADMIN_PASSWORD, VIEWER, VIEWER_PASSWORD, csrf_of, log_in


async def _console_rows(db_url: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(db_url)
    try:
        return await conn.fetch("SELECT * FROM sessions WHERE kind = 'console' ORDER BY id")
    finally:
        await conn.close()


async def _sql(db_url: str, sql: str, *args: object) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute(sql, *args)
    finally:
        await conn.close()


def _session_cookie(set_cookie: str) -> str:
    jar: SimpleCookie = SimpleCookie()
    jar.load(set_cookie)
    return jar["telemetry_console"].value


async def test_login_starts_a_session_stored_hashed_with_an_httponly_samesite_cookie(api, operators):
    status, set_cookie = await log_in(api.client, ADMIN, ADMIN_PASSWORD)
    assert status == 303
    line = next(c for c in set_cookie.split("\n") if c.startswith("telemetry_console="))
    assert "HttpOnly" in line and "SameSite=Lax" in line and "Path=/console/" in line
    assert "Secure" not in line  # plain HTTP from an untrusted peer
    secret = _session_cookie(line)
    (row,) = await _console_rows(api.db_url)
    assert row["token_hash"] == hashlib.sha256(secret.encode()).hexdigest()
    assert secret not in str(dict(row))
    page = await api.client.get("/console/")
    assert page.status == 200
    assert "Fleet overview" in await page.text()
    assert page.headers["Content-Security-Policy"].startswith("default-src 'self'")


async def test_wrong_password_unknown_name_and_ci_operator_get_the_same_401(api, operators):
    for name, password in ((ADMIN, "wrong password!"), ("nobody", ADMIN_PASSWORD)):
        status, set_cookie = await log_in(api.client, name, password)
        assert status == 401
        assert "telemetry_console=" not in set_cookie
    assert await _console_rows(api.db_url) == []
    page = await api.client.get("/console/", allow_redirects=False)
    assert page.status == 303 and page.headers["Location"] == "/console/login"


@pytest.mark.parametrize("expiry", ["idle", "absolute"])
async def test_an_expired_session_sends_you_to_the_login(api, operators, expiry):
    status, _ = await log_in(api.client, ADMIN, ADMIN_PASSWORD)
    assert status == 303
    assert (await api.client.get("/console/", allow_redirects=False)).status == 200
    if expiry == "idle":
        await _sql(
            api.db_url,
            "UPDATE sessions SET last_used_at = now() - interval '31 minutes' WHERE kind = 'console'",
        )
    else:
        await _sql(
            api.db_url, "UPDATE sessions SET expires_at = now() - interval '1 second' WHERE kind = 'console'"
        )
    r = await api.client.get("/console/", allow_redirects=False)
    assert r.status == 303 and r.headers["Location"] == "/console/login"
    polled = await api.client.get(
        "/console/overview/counts", headers={"HX-Request": "true"}, allow_redirects=False
    )
    assert polled.headers["HX-Redirect"] == "/console/login"


async def test_a_request_moves_the_idle_deadline_on(api, operators):
    await log_in(api.client, ADMIN, ADMIN_PASSWORD)
    await _sql(
        api.db_url, "UPDATE sessions SET last_used_at = now() - interval '29 minutes' WHERE kind = 'console'"
    )
    assert (await api.client.get("/console/", allow_redirects=False)).status == 200
    (row,) = await _console_rows(api.db_url)
    conn = await asyncpg.connect(api.db_url)
    try:
        assert await conn.fetchval("SELECT $1 > now() - interval '1 minute'", row["last_used_at"])
    finally:
        await conn.close()


async def test_logout_ends_the_session_in_the_database(api, operators):
    await log_in(api.client, ADMIN, ADMIN_PASSWORD)
    page = await api.client.get("/console/")
    r = await api.client.post(
        "/console/logout", data={"csrf": csrf_of(await page.text())}, allow_redirects=False
    )
    assert r.status == 303 and r.headers["Location"] == "/console/login"
    (row,) = await _console_rows(api.db_url)
    assert row["revoked_at"] is not None


@pytest.mark.parametrize("verb", ["revoke-operator", "rotate-operator", "set-password"])
async def test_the_cli_ends_console_sessions(api, operators, verb):
    _, set_cookie = await log_in(api.client, ADMIN, ADMIN_PASSWORD)
    secret = _session_cookie(set_cookie)
    conn = await asyncpg.connect(api.db_url)
    try:
        if verb == "revoke-operator":
            await revoke_operator(conn, ADMIN)
        elif verb == "rotate-operator":
            await rotate_operator(conn, ADMIN)
        else:
            await set_password(conn, ADMIN, "a brand new password")
    finally:
        await conn.close()
    r = await api.client.get("/console/", cookies={"telemetry_console": secret}, allow_redirects=False)
    assert r.status == 303


async def test_api_tokens_keep_working_and_neither_secret_works_in_the_others_place(api, operators):
    _, set_cookie = await log_in(api.client, ADMIN, ADMIN_PASSWORD)
    secret = _session_cookie(set_cookie)
    assert (await api.client.get("/v1/fleet/summary", headers=api.op())).status == 200
    as_bearer = await api.client.get("/v1/fleet/summary", headers={"Authorization": f"Bearer {secret}"})
    assert as_bearer.status == 401
    api.client.session.cookie_jar.clear()
    as_cookie = await api.client.get(
        "/console/", cookies={"telemetry_console": api.operator_token}, allow_redirects=False
    )
    assert as_cookie.status == 303
    conn = await asyncpg.connect(api.db_url)
    try:
        listed = {row[0]: row for row in await list_operators(conn)}
    finally:
        await conn.close()
    assert listed[ADMIN][3] == 1  # one API token; the console session is not one


async def test_a_form_without_its_csrf_token_is_403_and_does_nothing(api, operators):
    await api.enroll("phone-1")
    await log_in(api.client, ADMIN, ADMIN_PASSWORD)
    for data in ({"action": "lock"}, {"action": "lock", "csrf": "forged"}):
        r = await api.client.post("/console/devices/phone-1/dispatch", data=data)
        assert r.status == 403
        body = await r.text()
        assert "CSRF" in body and r.headers["X-Request-ID"] in body
    assert await api.count("SELECT count(*) FROM commands") == 0
    login = await api.client.post(
        "/console/login", data={"username": ADMIN, "password": ADMIN_PASSWORD}, allow_redirects=False
    )
    assert login.status == 403


async def test_a_viewer_sees_no_dispatch_form_and_a_forged_post_is_403(api, operators):
    await api.enroll("phone-1")
    await log_in(api.client, VIEWER, VIEWER_PASSWORD)
    page = await api.client.get("/console/devices/phone-1")
    html = await page.text()
    assert page.status == 200 and 'id="dispatch-form"' not in html
    r = await api.client.post(
        "/console/devices/phone-1/dispatch", data={"action": "lock", "csrf": csrf_of(html)}
    )
    assert r.status == 403
    assert await api.count("SELECT count(*) FROM commands") == 0


async def test_an_admin_dispatch_is_committed_and_listed_by_the_api(api, operators):
    await api.enroll("phone-1")
    await log_in(api.client, ADMIN, ADMIN_PASSWORD)
    page = await api.client.get("/console/devices/phone-1")
    r = await api.client.post(
        "/console/devices/phone-1/dispatch",
        data={"action": "lock", "payload": '{"why": "lost"}', "csrf": csrf_of(await page.text())},
    )
    assert r.status == 201, await r.text()
    listed = await api.client.get("/v1/commands?older_than=0", headers=api.op())
    (command,) = (await listed.json())["commands"]
    assert command["device_id"] == "phone-1" and command["command"] == "lock"
    assert command["payload"] == {"why": "lost"}


async def test_a_bad_dispatch_or_filter_is_a_4xx_page_naming_the_field(api, operators):
    await api.enroll("phone-1")
    await log_in(api.client, ADMIN, ADMIN_PASSWORD)
    page = await api.client.get("/console/devices/phone-1")
    csrf = csrf_of(await page.text())
    bad_payload = await api.client.post(
        "/console/devices/phone-1/dispatch", data={"action": "lock", "payload": "[1]", "csrf": csrf}
    )
    assert bad_payload.status == 422 and "payload" in await bad_payload.text()
    no_action = await api.client.post("/console/devices/phone-1/dispatch", data={"action": "", "csrf": csrf})
    assert no_action.status == 422 and "action" in await no_action.text()
    bad_filter = await api.client.get("/console/devices?battery_below=abc")
    assert bad_filter.status == 422 and 'id="error-field">battery_below<' in await bad_filter.text()
    unknown = await api.client.get("/console/devices/phone-404")
    assert unknown.status == 404 and unknown.headers["X-Request-ID"] in await unknown.text()
    assert await api.count("SELECT count(*) FROM commands") == 0


async def test_logins_are_throttled_per_client_address(api, operators):
    for _ in range(10):
        status, _ = await log_in(api.client, ADMIN, "wrong password!")
        assert status == 401
    status, set_cookie = await log_in(api.client, ADMIN, ADMIN_PASSWORD)
    assert status == 429
    assert "telemetry_console=" not in set_cookie


class TestBehindAProxy:
    @pytest.fixture
    def app_settings(self, db_url, mode):
        return settings_for(db_url, mode, trusted_proxies=(ipaddress.ip_network("127.0.0.1/32"),))

    async def test_the_cookie_is_secure_when_a_trusted_proxy_says_https(self, api, operators):
        status, set_cookie = await log_in(api.client, ADMIN, ADMIN_PASSWORD, **{"X-Forwarded-Proto": "https"})
        assert status == 303
        line = next(c for c in set_cookie.split("\n") if c.startswith("telemetry_console="))
        assert "Secure" in line

    async def test_the_throttle_counts_the_forwarded_client_not_the_proxy(self, api, operators):
        for _ in range(10):
            status, _ = await log_in(
                api.client, ADMIN, "wrong password!", **{"X-Forwarded-For": "198.51.100.7"}
            )
            assert status == 401
        blocked, _ = await log_in(api.client, ADMIN, ADMIN_PASSWORD, **{"X-Forwarded-For": "198.51.100.7"})
        other, _ = await log_in(api.client, ADMIN, ADMIN_PASSWORD, **{"X-Forwarded-For": "198.51.100.8"})
        assert (blocked, other) == (429, 303)


async def test_an_untrusted_peer_saying_https_gets_no_secure_flag(api, operators):
    _, set_cookie = await log_in(api.client, ADMIN, ADMIN_PASSWORD, **{"X-Forwarded-Proto": "https"})
    line = next(c for c in set_cookie.split("\n") if c.startswith("telemetry_console="))
    assert "Secure" not in line


async def test_what_the_database_cannot_store_is_a_422_naming_the_field(api, operators):
    await api.enroll("phone-1")
    await log_in(api.client, ADMIN, ADMIN_PASSWORD)
    page = await api.client.get("/console/devices/phone-1")
    csrf = csrf_of(await page.text())
    for payload, field in (('{"a": "\\u0000"}', "payload.a"), ('{"n": 99999999999999999999}', "payload.n")):
        r = await api.client.post(
            "/console/devices/phone-1/dispatch", data={"action": "lock", "payload": payload, "csrf": csrf}
        )
        assert r.status == 422, await r.text()
        assert f'id="error-field">{field}<' in await r.text()
    nul_action = await api.client.post(
        "/console/devices/phone-1/dispatch", data={"action": "lo\x00ck", "csrf": csrf}
    )
    assert nul_action.status == 422 and 'id="error-field">action<' in await nul_action.text()
    assert await api.count("SELECT count(*) FROM commands") == 0


async def test_a_name_holding_nul_is_a_wrong_login_not_an_error(api, operators):
    status, _ = await log_in(api.client, "ali\x00ce", ADMIN_PASSWORD)
    assert status == 401
