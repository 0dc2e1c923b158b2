"""`/console/admin`: operators and their tokens, enrollment tokens (minting one shows its secret
once), refused enrollments, webhooks, `telemetry retention show` and `check`, and job status.

Each part is the function its CLI command or API endpoint runs: `telemetry admin
list-operators`' `list_operators`, `POST /v1/enrollment-tokens`' `create_enrollment_token`
(after the API's own validation of the same fields), `GET /v1/enrollment-events`'
`enrollment_event_page`, `GET /v1/webhooks`' `list_subscriptions`, `retention show`'s `collect`
and `collect_audit` with its field labels, and `retention check`'s `assess` as the maintenance
round last ran it (`/health`'s; run here only before the first round). Its jobs are the job
status in timescale mode; in postgres mode the service's maintenance round is the job.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg
from aiohttp import web

from service.api.credentials import list_operators
from service.api.fleet import enrollment_event_page
from service.api.schemas import EnrollmentTokenRequest
from service.api.state import services
from service.api.validation import check_storable, convert
from service.console.access import render
from service.console.devices import form_text
from service.console.sessions import ConsoleSession
from service.enrollment_tokens import create_enrollment_token, list_enrollment_tokens
from service.retention.health import assess
from service.retention.show import audit_fields, collect, collect_audit, key_fields, table_fields
from service.webhooks.subscriptions import list_subscriptions

T = TypeVar("T")
TOKENS_SHOWN = 20
REFUSALS_SHOWN = 10
REFUSAL_OUTCOMES = ("refused", "already_enrolled", "banned")


async def _context(request: web.Request) -> dict[str, Any]:
    svc = services(request)
    mode, settings = svc.storage_mode, svc.settings
    pool = svc.pool

    async def on_connection(read: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        async with pool.acquire() as conn:
            return await read(conn)

    # Independent reads, each on its own connection: the page waits for the slowest, not the sum.
    operators, tokens, refused, webhooks, shown, audits = await asyncio.gather(
        on_connection(list_operators),
        list_enrollment_tokens(pool, TOKENS_SHOWN),
        asyncio.gather(
            *(enrollment_event_page(pool, None, o, REFUSALS_SHOWN, None) for o in REFUSAL_OUTCOMES)
        ),
        on_connection(list_subscriptions),
        on_connection(lambda conn: collect(conn, mode, settings)),
        on_connection(lambda conn: collect_audit(conn, settings)),
    )
    refusals = {outcome: page.events for outcome, page in zip(REFUSAL_OUTCOMES, refused, strict=True)}
    tables, keys = shown
    # `retention check`'s assessment as the maintenance round last made it (what /health
    # reports), or made now before the first round: it reads every retained table.
    last_round = svc.maintenance.last_health if svc.maintenance is not None else None
    health = last_round or await on_connection(lambda conn: assess(conn, mode, settings))
    blocks = [(t.table, table_fields(t)) for t in tables] + [("fcm_dispatch_keys", key_fields(keys))]
    blocks += [(a.table, audit_fields(a)) for a in audits]
    return {
        "operators": operators,
        "tokens": tokens,
        "refusals": refusals,
        "webhooks": webhooks,
        "retention_blocks": blocks,
        "health": health,
        "mode": mode,
        "last_round": last_round,
        "minted": None,
    }


async def get_admin(request: web.Request, session: ConsoleSession) -> web.StreamResponse:
    return render(request, "admin.html", await _context(request))


def _integer(form: Any, name: str, default: int) -> int | str:
    # An integer as the API reads it; anything else goes to the API's checks as text and is
    # refused there, naming the field.
    text = (form_text(form, name) or "").strip()
    if not text:
        return default
    return int(text) if text.isdigit() and len(text) <= 19 else text


async def post_enrollment_token(request: web.Request, session: ConsoleSession) -> web.StreamResponse:
    form = await request.post()
    body: dict[str, Any] = {
        "max_uses": _integer(form, "max_uses", 1),
        "expires_in_seconds": _integer(form, "expires_in_seconds", 86400),
        "note": form_text(form, "note") or None,
        "device_id": form_text(form, "device_id") or None,
    }
    check_storable(body)
    spec = convert(body, EnrollmentTokenRequest)
    minted = await create_enrollment_token(services(request).pool, created_by=session.user_id, spec=spec)
    context = await _context(request)
    context["minted"] = minted
    return render(request, "admin.html", context, status=201)
