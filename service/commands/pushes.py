"""A command's push as its reads show it: the `command_pushes` row beside the command.

The row is queued by the dispatch's statement (`service.commands.dispatches`) and moved by the
push worker (`service.push.worker`, whose `PushStatus` spells the stored statuses; a sibling
package, so they are repeated here as text and tests/push checks the two agree). A command
without a row was dispatched while FCM was not configured: it reads `not_configured`.

Read through the row's primary key `(id, device_id)` from the command's own row
(`service.commands.reads`), so adding the push to a command read costs one index probe per
command, whatever the outbox holds.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import asyncpg
import msgspec
from msgspec import Meta

STATUSES = ("queued", "sent", "failed", "no_token", "not_configured")
NOT_CONFIGURED = "not_configured"


class PushState(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The command's FCM push: queued (waiting to be sent or retried), sent (FCM accepted it:
    `message_name`, `pushed_at`), failed (a final answer, or retries reached the command's TTL:
    `last_error`), no_token (the device had no valid registration token) or not_configured (FCM
    was not configured when it was dispatched)."""

    status: Annotated[str, Meta(description="queued, sent, failed, no_token or not_configured")]
    attempts: Annotated[int, Meta(description="Send attempts made (claims) so far")]
    message_name: Annotated[
        str | None, Meta(description="FCM's name of the sent message (projects/…/messages/…)")
    ]
    last_error: Annotated[
        str | None, Meta(description="FCM's error code (or timeout, connection) of the last failed attempt")
    ]
    pushed_at: Annotated[datetime | None, Meta(description="When FCM accepted the message")]

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> PushState:
        if row["push_status"] is None:
            return NO_PUSH
        return cls(**{name: row[f"push_{name}"] for name in cls.__struct_fields__})


NO_PUSH = PushState(status=NOT_CONFIGURED, attempts=0, message_name=None, last_error=None, pushed_at=None)

# Its columns are named `push_*`, so a statement's unqualified `status`, `device_id` or
# `created_at` still names the command's.
PUSH_COLUMNS = "push_status, push_attempts, push_message_name, push_last_error, push_pushed_at"
PUSH_JOIN = """LEFT JOIN LATERAL (
    SELECT p.status AS push_status, p.attempts AS push_attempts, p.message_name AS push_message_name,
           p.last_error AS push_last_error, p.pushed_at AS push_pushed_at
    FROM command_pushes p WHERE p.id = commands.id AND p.device_id = commands.device_id
) push ON true"""
