"""`/console/login` and `/console/logout`.

Guarantees:
- A login is throttled per client address (`service.api.client_address`) like enrollment:
  after `LOGIN_FAILURES` failures in a minute that address gets 429 with Retry-After until the
  minute has passed, before any password is hashed.
- A wrong name, a wrong password, an operator without a password, a disabled one and a `ci`
  one get the same answer (401, the same page), after the same amount of hashing.
- The login form is protected against CSRF by a double submit (`service.console.csrf`); its
  body is at most `LOGIN_MAX_BODY_BYTES` (413 before it is read).
- A successful login starts a session (`service.console.sessions`) and sets its cookie; a
  logout ends the session in the database at once and clears the cookie.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from service.api.client_address import request_client
from service.api.errors import ApiError
from service.api.state import services
from service.api.throttle import FailureThrottle
from service.console import csrf, passwords, sessions
from service.console.access import error_page, render, secured
from service.console.sessions import ConsoleSession

LOGIN_FAILURES = 10
LOGIN_MAX_BODY_BYTES = 4096
LOGIN_THROTTLE = web.AppKey("console_login_throttle", FailureThrottle)


def _secure(request: web.Request) -> bool:
    return sessions.came_over_tls(request, services(request).settings.trusted_proxies)


def _login_form(
    request: web.Request, *, status: int = 200, message: str | None = None, name: str = ""
) -> web.Response:
    token = csrf.new_login_token()
    response = render(
        request, "login.html", {"csrf_token": token, "message": message, "name": name}, status=status
    )
    sessions.set_cookie(response, csrf.LOGIN_COOKIE, token, secure=_secure(request), strict=True)
    return response


async def get_login(request: web.Request) -> web.StreamResponse:
    return _login_form(request)


def _field(form: Any, name: str) -> str:
    value = form.get(name)
    return value if isinstance(value, str) else ""


async def post_login(request: web.Request) -> web.StreamResponse:
    if request.content_length is None or request.content_length > LOGIN_MAX_BODY_BYTES:
        return error_page(
            request, ApiError(413, "body_too_large", f"a login form is at most {LOGIN_MAX_BODY_BYTES} bytes")
        )
    svc = services(request)
    client = request_client(request, svc.settings.trusted_proxies)
    attempt, retry_after = await request.app[LOGIN_THROTTLE].reserve(client)
    if attempt is None:
        response = error_page(
            request, ApiError(429, "too_many_logins", "too many failed logins from this address; wait")
        )
        response.headers["Retry-After"] = str(retry_after)
        return response
    failed = True
    try:
        form = await request.post()
        if not csrf.matches(request.cookies.get(csrf.LOGIN_COOKIE), _field(form, csrf.FIELD)):
            failed = False  # a stale form is not a guess: not counted
            return error_page(
                request,
                ApiError(403, "csrf", "the login form's CSRF token is missing or wrong", field=csrf.FIELD),
            )
        name, password = _field(form, "username")[:128], _field(form, "password")
        # PostgreSQL text cannot hold U+0000: such a name is no operator (and not a query error).
        row = (
            None
            if "\x00" in name
            else await svc.pool.fetchrow(
                "SELECT id, password_hash FROM users WHERE username = $1 AND disabled_at IS NULL"
                " AND role = ANY($2::text[])",
                name,
                list(sessions.CONSOLE_ROLES),
            )
        )
        stored = row["password_hash"] if row is not None else None
        if not await passwords.verify(stored, password) or row is None:
            return _login_form(request, status=401, message="Wrong name or password.", name=name)
        async with svc.pool.acquire() as conn:
            secret = await sessions.start(conn, row["id"])
        failed = False
    finally:
        if failed:
            request.app[LOGIN_THROTTLE].fail(attempt)
        else:
            request.app[LOGIN_THROTTLE].release(attempt)
    response = secured(web.Response(status=303, headers={"Location": "/console/"}))
    sessions.set_cookie(response, sessions.COOKIE, secret, secure=_secure(request), strict=False)
    response.del_cookie(csrf.LOGIN_COOKIE, path="/console/")
    return response


async def post_logout(request: web.Request, session: ConsoleSession) -> web.StreamResponse:
    await sessions.end(services(request).pool, request.cookies.get(sessions.COOKIE))
    response = secured(web.Response(status=303, headers={"Location": "/console/login"}))
    response.del_cookie(sessions.COOKIE, path="/console/")
    return response
