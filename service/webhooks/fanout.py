"""Each subscription's events become delivery rows, derived from the committed log.

Per subscription, one transaction: lock its row (SKIP LOCKED: another instance doing the same
subscription now is left to it), read the feed after its cursor (`service.events.feed`: only
events whose transaction ended, in an order nothing commits behind), insert one delivery per
event (`ON CONFLICT DO NOTHING` on (subscription, event)), move the cursor. A crash before the
commit leaves the cursor where it was: the same events are fanned out again, never lost.
"""

from __future__ import annotations

import asyncpg
import msgspec

from service.events import feed

PAGE = 500

_SUBSCRIPTIONS = "SELECT id FROM webhook_subscriptions WHERE enabled ORDER BY id"
_LOCK = """
SELECT id, event_types, after_txid, after_id FROM webhook_subscriptions
WHERE id = $1 AND enabled FOR UPDATE SKIP LOCKED
"""
_INSERT = """
INSERT INTO webhook_deliveries (subscription_id, event_id, event)
SELECT $1, e.id, e.body FROM unnest($2::bigint[], $3::jsonb[]) AS e(id, body)
ON CONFLICT (subscription_id, event_id) DO NOTHING
"""
_MOVE = "UPDATE webhook_subscriptions SET after_txid = $2, after_id = $3 WHERE id = $1"


def message(event: feed.StoredEvent) -> dict[str, object]:
    """The delivery's JSON body: the event as `GET /v1/events` lists it."""
    return {
        "id": event.id,
        "cursor": str(event.cursor),
        "type": event.type,
        "version": event.version,
        "occurred_at": event.occurred_at,
        "device_id": event.device_id,
        "payload": event.payload,
    }


async def fan_out(conn: asyncpg.Connection, *, max_pages: int = 10) -> int:
    """Delivery rows for every enabled subscription's new events; how many were created."""
    created = 0
    for (sub_id,) in await conn.fetch(_SUBSCRIPTIONS):
        for _ in range(max_pages):
            async with conn.transaction():
                sub = await conn.fetchrow(_LOCK, sub_id)
                if sub is None:
                    break
                after = feed.Cursor(sub["after_txid"], sub["after_id"])
                page = await feed.read_page(conn, after, PAGE, types=sub["event_types"])
                if page.events:
                    bodies = [msgspec.to_builtins(message(e)) for e in page.events]
                    status = await conn.execute(_INSERT, sub_id, [e.id for e in page.events], bodies)
                    created += int(status.split()[-1])
                if page.next_cursor != after:
                    await conn.execute(_MOVE, sub_id, page.next_cursor.txid, page.next_cursor.id)
            if page.complete:
                break
    return created
