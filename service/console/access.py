"""Who may see and do what in the console: every console handler is registered through `page`.

Guarantees, checked here before a handler runs, so no handler can forget them:
- Without a live session (`service.console.sessions`) a page redirects to the login (an htmx
  partial answers `HX-Redirect` instead, so a polling page goes to the login too).
- A POST needs the session's CSRF token in its `csrf` field, else 403 and nothing is done.
- A write (`write=True`) by a viewer is 403, whatever the page showed.
- An `ApiError` raised by the domain or by validation is an HTML page with its status, the
  field it names and the request id, never a stack trace; every console answer carries a
  Content-Security-Policy that allows scripts from the console's own static files only.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp_jinja2
from aiohttp import web

from service.api import request_id
from service.api.errors import ApiError
from service.api.state import services
from service.console import csrf, sessions
from service.console.sessions import ConsoleSession

LOGIN_PATH = "/console/login"
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; object-src 'none';"
    " base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
ConsoleHandler = Callable[[web.Request, ConsoleSession], Awaitable[web.StreamResponse]]
_SESSION = web.RequestKey("console_session", ConsoleSession)


def render(
    request: web.Request, template: str, context: dict[str, Any], *, status: int = 200
) -> web.Response:
    session = request.get(_SESSION)
    response = aiohttp_jinja2.render_template(
        template,
        request,
        {"session": session, "request_id": request_id.of(request), **context},
        status=status,
    )
    return secured(response)


def secured(response: web.Response) -> web.Response:
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["Cache-Control"] = "no-store"
    return response


def error_page(request: web.Request, error: ApiError) -> web.Response:
    return render(request, "error.html", {"error": error}, status=error.status)


def to_login(request: web.Request) -> web.Response:
    if request.headers.get("HX-Request") == "true":
        response = web.Response(status=200, headers={"HX-Redirect": LOGIN_PATH})
    else:
        response = web.Response(status=303, headers={"Location": LOGIN_PATH})
    return secured(response)


def page(
    handler: ConsoleHandler, *, write: bool = False
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def console_page(request: web.Request) -> web.StreamResponse:
        session = await sessions.resume(services(request).pool, request.cookies.get(sessions.COOKIE))
        if session is None:
            return to_login(request)
        request[_SESSION] = session
        try:
            if request.method == "POST":
                form = await request.post()
                presented = form.get(csrf.FIELD)
                if not csrf.matches(session.csrf_token, presented if isinstance(presented, str) else None):
                    raise ApiError(403, "csrf", "the form's CSRF token is missing or wrong", field=csrf.FIELD)
            if write and not session.can_write:
                raise ApiError(403, "forbidden", f"operator role {session.role!r} can only read")
            return await handler(request, session)
        except ApiError as exc:
            return error_page(request, exc)

    console_page.__name__ = handler.__name__
    return console_page
