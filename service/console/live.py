"""`/console/events/stream`: `GET /v1/events/stream` for a console session.

A browser's EventSource cannot send a bearer token, so the console serves the API's stream
handler itself, to the session's operator: the same events, cursor, `Last-Event-ID` resumption,
keepalives and time limit. The overview refreshes its counts when an event arrives and polls
as well, so it stays current where the stream cannot be held open.
"""

from __future__ import annotations

from typing import cast

from aiohttp import web

from service.api.auth import authenticated_as
from service.api.credentials import Operator, Role
from service.api.events import stream_events
from service.api.parameters import EventStreamQuery, parse
from service.console.sessions import ConsoleSession


async def get_stream(request: web.Request, session: ConsoleSession) -> web.StreamResponse:
    params = parse(EventStreamQuery, request.match_info, request.query)
    role = cast(Role, session.role)  # a live console session is an admin's or a viewer's
    authenticated_as(request, Operator(session.user_id, session.username, session.session_id, role))
    return await stream_events(request, params)
