"""Webhook subscriptions over HTTP: create (the signing secret answered once), list, read,
change, delete, ping, list undelivered deliveries, replay.

Guarantees:
* The secret is in the 201 of `POST /v1/webhooks` and nowhere else: no other answer carries it
  and nothing here logs a request body.
* A receiver URL is refused with 422 naming `url` when it is not http(s), longer than 2048
  characters, carries credentials, or (unless `TELEMETRY_WEBHOOK_ALLOW_PRIVATE`) resolves to a
  loopback, private, link-local or metadata address; an unknown event type is 422 naming
  `event_types[i]`; a webhook id that names none is 404 naming `webhook_id`.
* Reads are for viewers, changes for admins (from the route table, as everywhere).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, NoReturn

from aiohttp import web
from msgspec import UNSET, Meta, UnsetType

from service.api.audit import actor
from service.api.auth import require_operator
from service.api.errors import ApiError, not_found, unprocessable
from service.api.parameters import WebhookDeliveriesQuery, WebhookIdPath
from service.api.responses import json_response
from service.api.schemas import Struct
from service.api.state import services
from service.api.validation import decode
from service.audit.log import AuditAction, record
from service.events.catalogue import EVENT_TYPES
from service.webhooks import subscriptions as subs
from service.webhooks.urls import MAX_URL, UrlRefused
from service.webhooks.worker import WebhookWorker

WEBHOOKS = web.AppKey("webhooks", WebhookWorker)
_MAX_ID = 2**63 - 1

EventType = Literal.__getitem__(tuple(EVENT_TYPES))  # type: ignore[attr-defined]
EventTypes = Annotated[
    list[EventType],  # type: ignore[valid-type]
    Meta(min_length=1, max_length=64, description="Only these types (the keys of x-event-catalogue)"),
]
Url = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=MAX_URL,
        description="http(s), no credentials; by default its host must resolve to public addresses only",
    ),
]
Description = Annotated[str, Meta(max_length=256)]


class WebhookRequest(Struct):
    url: Url
    event_types: Annotated[EventTypes | None, Meta(description="Null or absent: every type")] = None
    description: Description | None = None


class WebhookPatch(Struct):
    """Only the fields given change; `event_types: null` means every type from now on."""

    enabled: bool | UnsetType = UNSET
    event_types: EventTypes | UnsetType | None = UNSET
    description: Description | UnsetType | None = UNSET


class Webhook(Struct):
    id: int
    url: str
    event_types: list[str] | None
    description: str | None
    enabled: bool
    disabled_reason: Annotated[
        str | None, Meta(description="Why it is disabled: 'gone (410)' or 'disabled by an operator'")
    ]
    created_at: datetime
    pending: Annotated[int, Meta(description="Deliveries not yet attempted")]
    failed: Annotated[int, Meta(description="Deliveries whose last attempt failed, to be retried")]
    dead: Annotated[
        int, Meta(description="Deliveries given up (410, or past TELEMETRY_WEBHOOK_RETRY_SECONDS)")
    ]
    delivered: Annotated[
        int, Meta(description="Delivered, still kept (TELEMETRY_WEBHOOK_KEEP_DELIVERED_SECONDS)")
    ]


class WebhookCreated(Struct):
    id: int
    secret: Annotated[
        str, Meta(description="The signing secret (Standard Webhooks, whsec_…): shown this once only")
    ]
    webhook: Webhook


class WebhookList(Struct):
    webhooks: list[Webhook]


class WebhookPing(Struct):
    delivered: Annotated[bool, Meta(description="The receiver answered 2xx")]
    status_code: int | None
    error: Annotated[str | None, Meta(description="At most 1 KB of the answer, or why none came")]
    duration_seconds: float


class WebhookDelivery(Struct):
    id: int
    event_id: int
    event_type: str
    status: Annotated[str, Meta(description="pending, failed (retrying) or dead")]
    attempts: int
    next_attempt_at: datetime
    last_status_code: int | None
    last_error: str | None
    created_at: datetime


class WebhookDeliveryList(Struct):
    deliveries: list[WebhookDelivery]
    next_before: Annotated[int | None, Meta(description="Pass as `before` for the next (older) page")]


class WebhookReplayRequest(Struct):
    """Exactly one of the two."""

    from_event_id: (
        Annotated[int, Meta(ge=1, le=_MAX_ID, description="Every kept event from this id on")] | None
    ) = None
    delivery_ids: (
        Annotated[list[Annotated[int, Meta(ge=1, le=_MAX_ID)]], Meta(min_length=1, max_length=1000)] | None
    ) = None


class WebhookReplayed(Struct):
    replayed: int
    next_event_id: Annotated[
        int | None, Meta(description=f"Replay stopped after {subs.REPLAY_MAX} events: go on from this id")
    ]
    unknown_delivery_ids: Annotated[
        list[int], Meta(description="Not deliveries of this webhook (or expired)")
    ]


def _webhook(sub: subs.Subscription) -> Webhook:
    return Webhook(**{f: getattr(sub, f) for f in Webhook.__struct_fields__})


def _missing() -> NoReturn:
    raise not_found("no such webhook", field="webhook_id")


def _unknown_type(exc: subs.UnknownEventType) -> ApiError:
    return unprocessable(str(exc), field=f"event_types[{exc.index}]")


async def create_webhook(request: web.Request) -> web.Response:
    operator = await require_operator(request)
    body = await decode(request, WebhookRequest)
    svc = services(request)
    async with svc.pool.acquire() as conn, conn.transaction():
        try:
            created = await subs.create_subscription(
                conn,
                body.url,
                body.event_types,
                body.description,
                allow_private=svc.settings.webhook_allow_private,
            )
        except UrlRefused as exc:
            raise unprocessable(str(exc), field="url", code="url_refused") from None
        except subs.UnknownEventType as exc:
            raise _unknown_type(exc) from None
        details = {"url": body.url, "event_types": body.event_types}
        target = f"webhook:{created.id}"
        await record(conn, actor(request, operator), AuditAction.WEBHOOK_CREATE, target, details)
        sub = await subs.get_subscription(conn, created.id)
    if sub is None:  # deleted by another request in between
        _missing()
    return json_response(
        WebhookCreated(id=created.id, secret=created.secret, webhook=_webhook(sub)), status=201
    )


async def list_webhooks(request: web.Request) -> web.Response:
    await require_operator(request)
    async with services(request).pool.acquire() as conn:
        found = await subs.list_subscriptions(conn)
    return json_response(WebhookList(webhooks=[_webhook(s) for s in found]))


async def get_webhook(request: web.Request, params: WebhookIdPath) -> web.Response:
    await require_operator(request)
    sub_id = params.webhook_id
    async with services(request).pool.acquire() as conn:
        sub = await subs.get_subscription(conn, sub_id)
    if sub is None:
        _missing()
    return json_response(_webhook(sub))


async def update_webhook(request: web.Request, params: WebhookIdPath) -> web.Response:
    operator = await require_operator(request)
    sub_id = params.webhook_id
    patch = await decode(request, WebhookPatch)
    changes: dict[str, Any] = {}
    if patch.enabled is not UNSET:
        changes["enabled"] = patch.enabled
    if patch.event_types is not UNSET:
        changes["event_types"] = patch.event_types
    if patch.description is not UNSET:
        changes["description"] = patch.description
    async with services(request).pool.acquire() as conn, conn.transaction():
        try:
            sub = await subs.update_subscription(conn, sub_id, **changes)
        except subs.UnknownEventType as exc:
            raise _unknown_type(exc) from None
        if sub is None:
            _missing()
        target = f"webhook:{sub_id}"
        await record(conn, actor(request, operator), AuditAction.WEBHOOK_UPDATE, target, changes)
    return json_response(_webhook(sub))


async def delete_webhook(request: web.Request, params: WebhookIdPath) -> web.Response:
    operator = await require_operator(request)
    sub_id = params.webhook_id
    async with services(request).pool.acquire() as conn, conn.transaction():
        if not await subs.delete_subscription(conn, sub_id):
            _missing()
        await record(conn, actor(request, operator), AuditAction.WEBHOOK_DELETE, f"webhook:{sub_id}")
    return json_response({"id": sub_id, "deleted": True})


async def test_webhook(request: web.Request, params: WebhookIdPath) -> web.Response:
    """A signed `webhook.ping` sent now (not recorded as a delivery); answers what came of it."""
    operator = await require_operator(request)
    sub_id = params.webhook_id
    async with services(request).pool.acquire() as conn:
        where = await subs.target(conn, sub_id)
        if where is None:
            _missing()
        # Recorded before the ping goes out: a send is not a transaction to join.
        await record(conn, actor(request, operator), AuditAction.WEBHOOK_TEST, f"webhook:{sub_id}")
    started = datetime.now()
    attempt = await request.app[WEBHOOKS].sender.ping(where.url, where.secret)
    took = (datetime.now() - started).total_seconds()
    ok = attempt.status is not None and 200 <= attempt.status < 300
    return json_response(
        WebhookPing(
            delivered=ok, status_code=attempt.status, error=attempt.error, duration_seconds=round(took, 3)
        )
    )


async def list_webhook_deliveries(request: web.Request, params: WebhookDeliveriesQuery) -> web.Response:
    await require_operator(request)
    sub_id = params.webhook_id
    status, limit, before = params.status, params.limit, params.before
    async with services(request).pool.acquire() as conn:
        if await subs.get_subscription(conn, sub_id) is None:
            _missing()
        found = await subs.list_deliveries(conn, sub_id, status, limit, before)  # type: ignore[arg-type]
    page = [
        WebhookDelivery(
            id=d.id,
            event_id=d.event_id,
            event_type=d.event_type,
            status="failed" if d.status == "pending" and d.last_error is not None else d.status,
            attempts=d.attempts,
            next_attempt_at=d.next_attempt_at,
            last_status_code=d.last_status_code,
            last_error=d.last_error,
            created_at=d.created_at,
        )
        for d in found
    ]
    return json_response(
        WebhookDeliveryList(deliveries=page, next_before=page[-1].id if len(page) == limit else None)
    )


async def replay_webhook(request: web.Request, params: WebhookIdPath) -> web.Response:
    operator = await require_operator(request)
    sub_id = params.webhook_id
    body = await decode(request, WebhookReplayRequest)
    if (body.from_event_id is None) == (body.delivery_ids is None):
        raise unprocessable("give exactly one of from_event_id and delivery_ids", field="from_event_id")
    async with services(request).pool.acquire() as conn, conn.transaction():
        if body.from_event_id is not None:
            done = await subs.replay_from_event(conn, sub_id, body.from_event_id)
        else:
            done = await subs.replay_deliveries(conn, sub_id, body.delivery_ids or [])
        if done is None:
            _missing()
        details = {
            "from_event_id": body.from_event_id,
            "delivery_ids": body.delivery_ids,
            "replayed": done.replayed,
        }
        await record(conn, actor(request, operator), AuditAction.WEBHOOK_REPLAY, f"webhook:{sub_id}", details)
    return json_response(
        WebhookReplayed(
            replayed=done.replayed,
            next_event_id=done.next_event_id,
            unknown_delivery_ids=list(done.unknown_delivery_ids),
        )
    )


__all__ = ["WEBHOOKS"]
