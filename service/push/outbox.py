"""The push outbox (`command_pushes`): claiming due pushes and recording what FCM answered.

A row is queued by the dispatch's own statement (`service.commands.dispatches`, FCM
configured), so it is committed with its command. Guarantees:

* Claimed through the database: one `UPDATE` over `FOR UPDATE SKIP LOCKED` rows counts the
  attempt and sets a lease (`next_attempt_at` moved past the attempt's longest time plus its
  record) and commits before anything is sent. N instances send each push once in the normal
  case; an instance killed after its claim leaves the row `queued`, claimed again once the lease
  passed (so a crash causes at most its in-flight pushes to be sent twice: a repeated wake-up is
  harmless, the device pulls its commands once).
* An outcome is recorded only while its claim is in force: the row's `next_attempt_at` still is
  the lease the claim set, and it is still `queued`. A late outcome never overwrites a newer
  claim's.
* `UNREGISTERED` marks the device's token invalid (`service.push.tokens.mark_unregistered`, only
  if it is still the token the push went to) in the same transaction as the push's failure.
* Claims and outcomes are committed with `synchronous_commit = off` for those transactions only:
  a database crash can lose the last fraction of a second of them, which makes those pushes due
  again (a duplicate wake-up, never a lost push).
* Every push ends `sent`, `failed` or `no_token`, or stays `queued` with its next attempt due
  before `expires_at` (the command's TTL): nothing is dropped without a status.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg

from service.db.statuses import CheckedStatus
from service.push.tokens import mark_unregistered


class PushStatus(CheckedStatus):
    """A command's push as stored. `not_configured` (`NOT_CONFIGURED`) is never stored: it is
    what a command without a push row reads as (FCM was not configured when it was dispatched)."""

    QUEUED = "queued"
    SENT = "sent"
    FAILED = "failed"
    NO_TOKEN = "no_token"


NOT_CONFIGURED = "not_configured"
# Every status a command read can show, stored or not.
READ_STATUSES = (*PushStatus.values(), NOT_CONFIGURED)

_CLAIM = f"""
WITH due AS (
    SELECT id, device_id FROM command_pushes
    WHERE status = '{PushStatus.QUEUED}' AND next_attempt_at <= now()
    ORDER BY next_attempt_at
    LIMIT $1
    FOR UPDATE SKIP LOCKED
)
UPDATE command_pushes p SET attempts = p.attempts + 1, next_attempt_at = now() + $2::interval
FROM due
WHERE p.id = due.id AND p.device_id = due.device_id
RETURNING p.id, p.device_id, p.request_id, p.action, p.attempts, p.created_at, p.expires_at,
    p.next_attempt_at AS lease,
    (SELECT t.token FROM device_push_tokens t
     WHERE t.device_id = p.device_id AND t.invalid_at IS NULL) AS token,
    EXISTS (SELECT 1 FROM commands c
            WHERE c.id = p.id AND c.device_id = p.device_id AND c.status = 'cancelled') AS cancelled
"""
# Outcomes of many attempts in one statement, each only for a claim still in force (its lease).
_RECORD = f"""
UPDATE command_pushes p SET
    status = k.status,
    next_attempt_at = CASE WHEN k.status = '{PushStatus.QUEUED}'
                           THEN now() + k.delay * interval '1 second' ELSE p.next_attempt_at END,
    message_name = coalesce(k.message_name, p.message_name),
    pushed_at = CASE WHEN k.status = '{PushStatus.SENT}' THEN k.at ELSE p.pushed_at END,
    last_status_code = k.code,
    last_error = coalesce(k.error, p.last_error)
FROM unnest($1::bigint[], $2::text[], $3::timestamptz[], $4::text[], $5::float8[], $6::int[],
            $7::text[], $8::text[], $9::timestamptz[])
    AS k(id, device_id, lease, status, delay, code, error, message_name, at)
WHERE p.id = k.id AND p.device_id = k.device_id AND p.next_attempt_at = k.lease
  AND p.status = '{PushStatus.QUEUED}'
RETURNING p.id, p.device_id
"""
# Claimed but not sent (shutdown): due again now rather than when the lease passes.
_RELEASE = f"""
UPDATE command_pushes p SET next_attempt_at = now()
FROM unnest($1::bigint[], $2::text[], $3::timestamptz[]) AS k(id, device_id, lease)
WHERE p.id = k.id AND p.device_id = k.device_id AND p.next_attempt_at = k.lease
  AND p.status = '{PushStatus.QUEUED}'
"""
# The backlog gauges: the same database-wide figure from every instance.
BACKLOG = f"""
SELECT count(*) AS queued, coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8 AS oldest
FROM command_pushes WHERE status = '{PushStatus.QUEUED}'
"""
# Bookkeeping commits need not wait for the WAL flush (see the module's docstring).
_RELAXED = "SET LOCAL synchronous_commit = off"


@dataclass(frozen=True, slots=True)
class Claim:
    """A claimed push: what to send, where (`token`: None when the device has no valid one now),
    and the lease its outcome must still match."""

    id: int
    device_id: str
    request_id: str
    action: str
    attempts: int  # this attempt included
    created_at: datetime
    expires_at: datetime
    lease: datetime
    token: str | None
    cancelled: bool = False  # the command was cancelled before its push went out


@dataclass(frozen=True, slots=True)
class Outcome:
    """What to record for one claim: the new status (`queued` again: retried after `delay`)."""

    claim: Claim
    status: PushStatus
    at: datetime  # when FCM answered (`pushed_at` of a sent push)
    delay: float = 0.0
    http_status: int | None = None
    error: str | None = None
    message_name: str | None = None
    unregistered: bool = False  # FCM said the token is gone: invalidate it with this outcome


async def claim(pool: asyncpg.Pool, limit: int, lease: timedelta) -> list[Claim]:
    """Claim up to `limit` due pushes, oldest due first; committed (attempt counted, lease set)
    before this returns, so before anything is sent."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(_RELAXED)
        rows = await conn.fetch(_CLAIM, limit, lease)
    return [Claim(**dict(row)) for row in rows]


async def record(pool: asyncpg.Pool, outcomes: Sequence[Outcome]) -> set[tuple[int, str]]:
    """Record `outcomes` in one transaction, each only while its claim is in force; invalidate
    the tokens FCM called unregistered in the same transaction. The (id, device_id) of the
    pushes recorded (the others were released or claimed again meanwhile)."""
    if not outcomes:
        return set()
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(_RELAXED)
        rows = await conn.fetch(
            _RECORD,
            [o.claim.id for o in outcomes],
            [o.claim.device_id for o in outcomes],
            [o.claim.lease for o in outcomes],
            [o.status.value for o in outcomes],
            [o.delay for o in outcomes],
            [o.http_status for o in outcomes],
            [o.error[:256] if o.error else None for o in outcomes],
            [o.message_name[:256] if o.message_name else None for o in outcomes],
            [o.at for o in outcomes],
        )
        recorded = {(r["id"], r["device_id"]) for r in rows}
        for o in outcomes:
            if o.unregistered and o.claim.token is not None and (o.claim.id, o.claim.device_id) in recorded:
                await mark_unregistered(conn, o.claim.device_id, o.claim.token, o.error or "UNREGISTERED")
    return recorded


async def release(pool: asyncpg.Pool, claims: Sequence[Claim]) -> None:
    """Claimed pushes this instance will not send (shutdown): due again at once."""
    if claims:
        await pool.execute(
            _RELEASE, [c.id for c in claims], [c.device_id for c in claims], [c.lease for c in claims]
        )
