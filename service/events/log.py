"""Writing an event inside the transaction of its cause.

`record` and `record_many` run on the caller's connection, inside the caller's transaction:
the event commits with the change that causes it or not at all. They never open a transaction
of their own (asyncpg would commit it on its own), so calling them outside one is a bug the
caller owns. Payloads are catalogue structs (`service.events.catalogue`), encoded as they
will be read.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import asyncpg
import msgspec

from service.events.catalogue import Payload

# `occurred_at` defaults to the transaction's clock; `device_id` '' is a fleet-wide event.
_INSERT = """
INSERT INTO events (device_id, type, version, payload, occurred_at)
SELECT d, t, v, p, coalesce(o, now())
FROM unnest($1::text[], $2::text[], $3::smallint[], $4::jsonb[], $5::timestamptz[]) AS u(d, t, v, p, o)
"""


def _encoded(payload: Payload) -> object:
    return msgspec.to_builtins(payload)


async def record(
    conn: asyncpg.Connection,
    payload: Payload,
    device_id: str | None = None,
    occurred_at: datetime | None = None,
) -> None:
    """One event in the caller's transaction."""
    await record_many(conn, [(payload, device_id, occurred_at)])


async def record_many(
    conn: asyncpg.Connection, events: Sequence[tuple[Payload, str | None, datetime | None]]
) -> None:
    """Several events in one statement, ids drawn in the order given."""
    if not events:
        return
    await conn.execute(
        _INSERT,
        [device_id or "" for _, device_id, _ in events],
        [p.TYPE for p, _, _ in events],
        [p.VERSION for p, _, _ in events],
        [_encoded(p) for p, _, _ in events],
        [at for _, _, at in events],
    )
