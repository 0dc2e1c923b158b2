"""Who did what, as the API writes it and reads it back.

* `actor(request, operator)`: the audit `Actor` of an operator's request: its name, the
  request's `X-Request-ID` and its client address (`TELEMETRY_TRUSTED_PROXIES` decide which
  `X-Forwarded-For` is believed, as for the enrollment throttle).
* `GET /v1/audit?operator=&action=&target=&before=&limit=` (admin: the log names who did what,
  which viewers do not read): newest first, keyset paged by `before` (the id of the last entry
  of the previous page; `next_before` says where the next page starts, null on the last one).
"""

from __future__ import annotations

from aiohttp import web

from service.api import request_id
from service.api.auth import require_operator
from service.api.client_address import request_client
from service.api.credentials import Operator
from service.api.parameters import AuditQuery
from service.api.responses import json_response
from service.api.schemas import AuditList
from service.api.state import services
from service.audit.log import Actor, entries


def actor(request: web.Request, operator: Operator) -> Actor:
    """The audit actor of `operator`'s `request`."""
    return actor_named(request, operator.username)


def actor_named(request: web.Request, username: str) -> Actor:
    """The audit actor of a `request` made by the operator `username` (a console session's)."""
    proxies = services(request).settings.trusted_proxies
    return Actor(username, request_id.of(request), request_client(request, proxies))


async def list_audit(request: web.Request, params: AuditQuery) -> web.Response:
    await require_operator(request)
    async with services(request).pool.acquire() as conn:
        page = await entries(
            conn,
            operator=params.operator,
            action=params.action,
            target=params.target,
            before=params.before,
            limit=params.limit,
        )
    next_before = page[-1].id if len(page) == params.limit else None
    return json_response(AuditList(entries=page, next_before=next_before))
