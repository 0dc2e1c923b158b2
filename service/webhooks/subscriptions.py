"""Webhook subscriptions: created with a signing secret (answered once, never again), read,
changed (enabled, disabled, event types, description), deleted with their deliveries; and what
an operator does about deliveries: list them by status, replay them.

Guarantees:
* The secret leaves the database only to sign deliveries and in `create_subscription`'s answer;
  no other function here returns it.
* A subscription receives every matching event committed after its creation (its fan-out
  cursor starts at the feed's head), and nothing earlier unless replayed.
* Disabling stops fan-out and delivery; re-enabling resumes both where they stopped (events
  committed meanwhile are fanned out then, while the log still keeps them: nothing skipped).
* A replay makes deliveries pending again (a fresh retry window, attempts counted from 0): the
  same `webhook-id` as before, so a receiver that kept it sees a duplicate it can drop.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import asyncpg
import msgspec

from service.events import feed
from service.events.catalogue import BY_TYPE
from service.webhooks.fanout import message
from service.webhooks.urls import UrlRefused, check_url

# `failed`: pending, but its last attempt failed (the receiver is retried); `dead`: given up.
DeliveryStatus = Literal["pending", "failed", "dead"]
DELIVERY_STATUSES: tuple[DeliveryStatus, ...] = ("pending", "failed", "dead")
# At most this many events are replayed per request (the answer says where to go on from).
REPLAY_MAX = 10_000

_CREATE = """
INSERT INTO webhook_subscriptions (url, event_types, description, secret, after_txid, after_id)
VALUES ($1, $2, $3, $4, $5, $6) RETURNING id
"""
_COLUMNS = "s.id, s.url, s.event_types, s.description, s.enabled, s.disabled_reason, s.created_at"
# Per-subscription accounting, read with the subscription: every delivery row is in one column.
_COUNTS = """
(SELECT count(*) FILTER (WHERE d.status = 'pending' AND d.last_error IS NULL) AS pending,
        count(*) FILTER (WHERE d.status = 'pending' AND d.last_error IS NOT NULL) AS failed,
        count(*) FILTER (WHERE d.status = 'dead') AS dead,
        count(*) FILTER (WHERE d.status = 'delivered') AS delivered
 FROM webhook_deliveries d WHERE d.subscription_id = s.id) c
"""
_GET = f"SELECT {_COLUMNS}, c.* FROM webhook_subscriptions s CROSS JOIN LATERAL {_COUNTS} WHERE s.id = $1"
_LIST = f"SELECT {_COLUMNS}, c.* FROM webhook_subscriptions s CROSS JOIN LATERAL {_COUNTS} ORDER BY s.id"
_DELETE = "DELETE FROM webhook_subscriptions WHERE id = $1 RETURNING id"
_UPDATE = """
UPDATE webhook_subscriptions SET
    enabled = coalesce($2, enabled),
    disabled_reason = CASE WHEN $2 IS NULL THEN disabled_reason
                           WHEN $2 THEN NULL ELSE 'disabled by an operator' END,
    event_types = CASE WHEN $3 THEN $4 ELSE event_types END,
    description = CASE WHEN $5 THEN $6 ELSE description END
WHERE id = $1 RETURNING id
"""
_TARGET = "SELECT url, secret FROM webhook_subscriptions WHERE id = $1"

_STATUS_FILTER = {
    "pending": "d.status = 'pending' AND d.last_error IS NULL",
    "failed": "d.status = 'pending' AND d.last_error IS NOT NULL",
    "dead": "d.status = 'dead'",
}
_DELIVERY_COLUMNS = """d.id, d.event_id, d.event->>'type' AS event_type, d.status, d.attempts,
    d.next_attempt_at, d.last_status_code, d.last_error, d.created_at, d.delivered_at"""

# Replaying from an event: the log's visible events from that id on (as the feed lists them),
# matching the subscription's types. A delivery row that exists for one is made pending again.
_REPLAY_EVENTS = f"""
SELECT id, txid, type, version, occurred_at, device_id, payload FROM events
WHERE id >= $1 AND txid < {feed._HORIZON} AND ($2::text[] IS NULL OR type = ANY($2::text[]))
ORDER BY id LIMIT $3
"""
_REPLAY_INSERT = """
INSERT INTO webhook_deliveries (subscription_id, event_id, event)
SELECT $1, e.id, e.body FROM unnest($2::bigint[], $3::jsonb[]) AS e(id, body)
ON CONFLICT (subscription_id, event_id) DO UPDATE SET status = 'pending', attempts = 0,
    next_attempt_at = now(), created_at = now(), delivered_at = NULL, last_status_code = NULL,
    last_error = NULL
"""
_REPLAY_DELIVERIES = """
UPDATE webhook_deliveries SET status = 'pending', attempts = 0, next_attempt_at = now(),
    created_at = now(), delivered_at = NULL, last_status_code = NULL, last_error = NULL
WHERE subscription_id = $1 AND id = ANY($2::bigint[]) RETURNING id
"""


class UnknownEventType(ValueError):
    """An event type the catalogue does not list; `index` is its position in the request."""

    def __init__(self, index: int, name: str) -> None:
        super().__init__(f"unknown event type {name[:64]!r}")
        self.index = index


@dataclass(frozen=True, slots=True)
class Created:
    id: int
    secret: str  # "whsec_" + base64: shown to the operator once, kept to sign deliveries


@dataclass(frozen=True, slots=True)
class Subscription:
    """A subscription as operators see it (never its secret), with its deliveries counted."""

    id: int
    url: str
    event_types: list[str] | None  # None: every type
    description: str | None
    enabled: bool
    disabled_reason: str | None
    created_at: datetime
    pending: int
    failed: int
    dead: int
    delivered: int  # still kept (see `service.webhooks.worker` for how long)


@dataclass(frozen=True, slots=True)
class Delivery:
    id: int
    event_id: int
    event_type: str
    status: str
    attempts: int
    next_attempt_at: datetime
    last_status_code: int | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None


@dataclass(frozen=True, slots=True)
class Target:
    """Where and how to send: only the sender and the ping see this."""

    url: str
    secret: str


@dataclass(frozen=True, slots=True)
class Replayed:
    replayed: int
    # Replaying from an event stops after REPLAY_MAX: go on from this event id (None: done).
    next_event_id: int | None = None
    unknown_delivery_ids: tuple[int, ...] = ()


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def check_event_types(event_types: Sequence[str] | None) -> list[str] | None:
    """The types as stored (None: all); `UnknownEventType` naming the first unknown one."""
    if event_types is None:
        return None
    for i, name in enumerate(event_types):
        if name not in BY_TYPE:
            raise UnknownEventType(i, name)
    return list(dict.fromkeys(event_types))


async def create_subscription(
    conn: asyncpg.Connection,
    url: str,
    event_types: Sequence[str] | None,
    description: str | None,
    *,
    allow_private: bool,
) -> Created:
    """A subscription that receives every matching event committed from now on.

    Raises `UrlRefused` for a URL that may not be a receiver, `UnknownEventType` (a
    `ValueError`) for a type the catalogue does not list."""
    await check_url(url, allow_private=allow_private)
    types = check_event_types(event_types)
    secret = new_secret()
    start = await feed.head(conn)
    sub_id = await conn.fetchval(_CREATE, url, types or None, description, secret, start.txid, start.id)
    return Created(sub_id, secret)


def _subscription(row: asyncpg.Record) -> Subscription:
    return Subscription(**dict(row))


async def get_subscription(conn: asyncpg.Connection, sub_id: int) -> Subscription | None:
    row = await conn.fetchrow(_GET, sub_id)
    return None if row is None else _subscription(row)


async def list_subscriptions(conn: asyncpg.Connection) -> list[Subscription]:
    return [_subscription(r) for r in await conn.fetch(_LIST)]


_UNSET = object()


async def update_subscription(
    conn: asyncpg.Connection,
    sub_id: int,
    *,
    enabled: bool | None = None,
    event_types: Sequence[str] | object | None = _UNSET,
    description: str | object | None = _UNSET,
) -> Subscription | None:
    """Change what is given; None when there is no such subscription. Types are checked
    (`UnknownEventType`) and apply to events fanned out from now on."""
    types = None if event_types is _UNSET else check_event_types(event_types)  # type: ignore[arg-type]
    async with conn.transaction():
        found = await conn.fetchval(
            _UPDATE,
            sub_id,
            enabled,
            event_types is not _UNSET,
            types or None,
            description is not _UNSET,
            None if description is _UNSET else description,
        )
        return None if found is None else await get_subscription(conn, sub_id)


async def delete_subscription(conn: asyncpg.Connection, sub_id: int) -> bool:
    """Deletes it and its deliveries (pending ones are not sent); whether it existed."""
    return await conn.fetchval(_DELETE, sub_id) is not None


async def target(conn: asyncpg.Connection, sub_id: int) -> Target | None:
    row = await conn.fetchrow(_TARGET, sub_id)
    return None if row is None else Target(row["url"], row["secret"])


async def list_deliveries(
    conn: asyncpg.Connection,
    sub_id: int,
    status: DeliveryStatus | None,
    limit: int,
    before: int | None = None,
) -> list[Delivery]:
    """Undelivered deliveries (all three statuses when `status` is None), newest first; `before`
    is the id of the last one of the previous page."""
    where = _STATUS_FILTER[status] if status else "d.status <> 'delivered'"
    rows = await conn.fetch(
        f"SELECT {_DELIVERY_COLUMNS} FROM webhook_deliveries d WHERE d.subscription_id = $1"
        f" AND {where} AND ($2::bigint IS NULL OR d.id < $2) ORDER BY d.id DESC LIMIT $3",
        sub_id,
        before,
        limit,
    )
    return [Delivery(**dict(r)) for r in rows]


async def replay_from_event(conn: asyncpg.Connection, sub_id: int, event_id: int) -> Replayed | None:
    """Deliveries (again) of the subscription's events from `event_id` on, still in the log, up to
    REPLAY_MAX of them; None when there is no such subscription."""
    async with conn.transaction():
        types = await conn.fetchrow(
            "SELECT event_types FROM webhook_subscriptions WHERE id = $1 FOR UPDATE", sub_id
        )
        if types is None:
            return None
        rows = await conn.fetch(_REPLAY_EVENTS, event_id, types["event_types"], REPLAY_MAX + 1)
        events = [feed.StoredEvent.of(r) for r in rows[:REPLAY_MAX]]
        if events:
            bodies = [msgspec.to_builtins(message(e)) for e in events]
            await conn.execute(_REPLAY_INSERT, sub_id, [e.id for e in events], bodies)
        more = rows[REPLAY_MAX]["id"] if len(rows) > REPLAY_MAX else None
        return Replayed(len(events), next_event_id=more)


async def replay_deliveries(conn: asyncpg.Connection, sub_id: int, ids: Sequence[int]) -> Replayed | None:
    """The given deliveries of the subscription pending again; None when there is no such
    subscription. Ids it does not hold (another's, or expired) are answered, not replayed."""
    async with conn.transaction():
        if await conn.fetchval("SELECT 1 FROM webhook_subscriptions WHERE id = $1", sub_id) is None:
            return None
        done = {r["id"] for r in await conn.fetch(_REPLAY_DELIVERIES, sub_id, list(ids))}
    unknown = tuple(dict.fromkeys(i for i in ids if i not in done))
    return Replayed(len(done), unknown_delivery_ids=unknown)


__all__ = [
    "DELIVERY_STATUSES",
    "Created",
    "Delivery",
    "Replayed",
    "Subscription",
    "UnknownEventType",
    "UrlRefused",
    "create_subscription",
]
