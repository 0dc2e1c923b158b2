"""Command expiry: a maintenance step that closes commands no device finished.

A command still `pending` or `delivered` (no terminal ack: executed or failed) when
`TELEMETRY_COMMAND_TTL_SECONDS` have passed since its dispatch becomes `expired`, with
`expired_at` set. The service's maintenance task runs it in both storage modes, under the
maintenance advisory lock (`service.retention.maintenance`), so one instance does it at a time.

Guarantees:
* Forward only: the `UPDATE` re-checks the status under the row lock, so an ack that commits
  first wins and a command that reached executed or failed is never expired.
* Bounded: one statement changes at most `batch_size` commands (found through the partial index
  on open commands, no sort), each batch in its own transaction, at most `max_batches` per run.
* The clock is injectable (`now`), so tests can move past the TTL without waiting; the service
  uses the database's clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg

from service.commands.lifecycle import OPEN, CommandStatus
from service.db.errors import STATEMENT_FAILED

BATCH = 10_000

# `old` reads each row's status before the UPDATE (the UPDATE's RETURNING sees only the new
# one); the row lock is taken by the UPDATE, which re-checks the status under it. The
# `command.expired` event (`service.events.catalogue`) is written by the same statement, for
# exactly the rows it moved.
_EXPIRE = f"""
WITH old AS (
    SELECT id, status FROM commands
    WHERE {CommandStatus.sql_in("status", OPEN)} AND created_at < $1::timestamptz - $2::interval
    LIMIT $3
), expired AS (
    UPDATE commands c
    SET status = '{CommandStatus.EXPIRED}', expired_at = $1::timestamptz, updated_at = $1::timestamptz
    FROM old
    WHERE c.id = old.id AND {CommandStatus.sql_in("c.status", OPEN)}
    RETURNING c.id, c.device_id, c.request_id, c.command, c.created_at, old.status AS previous
), recorded AS (
    INSERT INTO events (device_id, type, payload, occurred_at)
    SELECT device_id, 'command.{CommandStatus.EXPIRED}',
           jsonb_build_object('request_id', request_id, 'command', command, 'previous', previous,
                              'dispatched_at', created_at),
           $1::timestamptz
    FROM expired ORDER BY id
)
SELECT count(*) FROM expired
"""


@dataclass(frozen=True, slots=True)
class CommandExpiry:
    expired: int = 0
    complete: bool = True  # False: the batch limit was reached with commands left
    error: str | None = None


async def expire_commands(
    conn: asyncpg.Connection,
    ttl: timedelta,
    *,
    now: datetime | None = None,
    batch_size: int = BATCH,
    max_batches: int | None = None,
) -> CommandExpiry:
    """Mark expired every open command dispatched more than `ttl` before `now` (default: the
    database's clock). Never raises for a database error: the result carries it."""
    expired = 0
    try:
        at = now if now is not None else await conn.fetchval("SELECT now()")
        batches = 0
        while max_batches is None or batches < max_batches:
            count = int(await conn.fetchval(_EXPIRE, at, ttl, batch_size))
            expired += count
            batches += 1
            if count < batch_size:
                return CommandExpiry(expired)
        return CommandExpiry(expired, complete=False)
    except STATEMENT_FAILED as exc:
        return CommandExpiry(expired, complete=False, error=str(exc))
