"""Devices' FCM registration tokens: what a plausible one is, recording a report, and marking a
token invalid when FCM said it is gone.

Guarantees:
* One row per device (`device_push_tokens`, keyed by `device_id`), written by one statement, so
  concurrent reports of one device leave the last one committed, never a mix.
* `changed_at` moves only when the token differs from the stored one; `reported_at` on every
  report. A different token clears `invalid_at`; the same token reported again stays invalid
  (FCM said that token is unregistered: only a new registration yields a usable one).
* `mark_unregistered` invalidates the token only if it is still the one the push was sent to:
  a device that reported a new token while the push was in flight keeps its new token valid.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

import asyncpg

# FCM does not document the token's format. Tokens seen in the field are an instance id, a
# colon and an `APA91b…` part, about 150-165 characters of the URL-safe base64 alphabet (older
# GCM tokens lack the colon part). The bounds leave room for growth and refuse what is clearly
# something else: an empty string, a placeholder, a JSON blob, whitespace.
MIN_TOKEN_LENGTH = 100
MAX_TOKEN_LENGTH = 1024
# ECMA-262 (OpenAPI) and Python alike; checked with `fullmatch`, since Python's `$` would let a
# trailing newline through.
TOKEN_PATTERN = r"^[A-Za-z0-9_-]+(:[A-Za-z0-9_-]+)?$"
_TOKEN = re.compile(TOKEN_PATTERN)


def is_plausible_token(value: str) -> bool:
    return MIN_TOKEN_LENGTH <= len(value) <= MAX_TOKEN_LENGTH and _TOKEN.fullmatch(value) is not None


@dataclass(frozen=True, slots=True)
class TokenReport:
    changed: bool  # the stored token is new or differs from the one before
    changed_at: datetime
    reported_at: datetime
    invalid_at: datetime | None


_RECORD = """
INSERT INTO device_push_tokens AS t (device_id, token) VALUES ($1, $2)
ON CONFLICT (device_id) DO UPDATE SET
    reported_at = now(),
    changed_at = CASE WHEN t.token = EXCLUDED.token THEN t.changed_at ELSE now() END,
    invalid_at = CASE WHEN t.token = EXCLUDED.token THEN t.invalid_at END,
    invalid_reason = CASE WHEN t.token = EXCLUDED.token THEN t.invalid_reason END,
    token = EXCLUDED.token
RETURNING changed_at, reported_at, invalid_at
"""

_MARK = """
UPDATE device_push_tokens SET invalid_at = now(), invalid_reason = $3
WHERE device_id = $1 AND token = $2 AND invalid_at IS NULL
"""

_TARGET = "SELECT token FROM device_push_tokens WHERE device_id = $1 AND invalid_at IS NULL"

Executor = asyncpg.Connection | asyncpg.Pool


async def record_token(db: Executor, device_id: str, token: str) -> TokenReport:
    """Store `token` as `device_id`'s registration token (the device must exist)."""
    row = await db.fetchrow(_RECORD, device_id, token)
    assert row is not None  # INSERT … ON CONFLICT DO UPDATE always returns its row
    # Both timestamps are the statement's now() exactly when the token was (re)placed.
    changed = row["changed_at"] == row["reported_at"]
    return TokenReport(changed, row["changed_at"], row["reported_at"], row["invalid_at"])


async def mark_unregistered(db: Executor, device_id: str, token: str, reason: str = "UNREGISTERED") -> bool:
    """FCM answered `reason` (UNREGISTERED) for `token`: no push goes to it until the device
    reports another. False when the device's token is no longer `token` (or already invalid)."""
    status = await db.execute(_MARK, device_id, token, reason[:64])
    return status == "UPDATE 1"


async def push_target(db: Executor, device_id: str) -> str | None:
    """The token a push to `device_id` goes to, or None: none reported, or invalidated."""
    return await db.fetchval(_TARGET, device_id)
