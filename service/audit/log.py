"""The operator audit log: one `operator_audit` row per operator write.

Every write an operator makes through the API (dispatch, cancel, revoke, reinstate, enrollment
tokens, APK registration, webhook and tag changes) and through the CLI (`telemetry admin …`,
`telemetry retention set`) records who (`operator`: the operator's name, or `cli:<account>` for
the CLI), what (`action`, one of `AuditAction`), to what (`target`, `<kind>:<id>`), the request's
`X-Request-ID` and the client address (through the trusted proxies), and what changed
(`details`, small JSON).

Guarantees:
* Same transaction: `record` writes on the caller's connection, so where the write is a
  transaction of the caller's the row commits with it or not at all (no audit row for a write
  that rolled back, no write without its row). Writes that are not the caller's transaction
  (a dispatch, committed by the group-commit writer) are recorded right after their commit.
* Kept `TELEMETRY_RETENTION_OPERATOR_AUDIT_SECONDS` (400 days), a plain table expired by the
  batched `DELETE` of every audit table (`service.retention.audit`).
* Read newest first by keyset (`before`: the id of the last entry of the previous page), each
  filter an index range scan (`operator`, `target`) or a filter over the id order (`action`).
"""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import asyncpg
import msgspec


class AuditAction(StrEnum):
    DISPATCH_CREATE = "dispatch.create"
    BULK_CREATE = "bulk.create"
    BULK_CANCEL = "bulk.cancel"
    COMMAND_CANCEL = "command.cancel"
    DEVICE_REVOKE = "device.revoke"
    DEVICE_REINSTATE = "device.reinstate"
    DEVICE_TAGS_SET = "device.tags_set"
    ENROLLMENT_TOKEN_CREATE = "enrollment_token.create"
    ENROLLMENT_TOKEN_REVOKE = "enrollment_token.revoke"
    APK_VERSION_REGISTER = "apk_version.register"
    WEBHOOK_CREATE = "webhook.create"
    WEBHOOK_UPDATE = "webhook.update"
    WEBHOOK_DELETE = "webhook.delete"
    WEBHOOK_TEST = "webhook.test"
    WEBHOOK_REPLAY = "webhook.replay"
    OPERATOR_CREATE = "operator.create"
    OPERATOR_ROTATE = "operator.rotate"
    OPERATOR_REVOKE = "operator.revoke"
    OPERATOR_SET_PASSWORD = "operator.set_password"
    RETENTION_SET = "retention.set"


@dataclass(frozen=True, slots=True)
class Actor:
    """Who writes: the operator's name (`cli:<account>` from the CLI), and for an API request
    its request id and client address."""

    operator: str
    request_id: str | None = None
    client_address: str | None = None


def cli_actor() -> Actor:
    """The CLI's actor: `cli:<account>`, the operating-system account that ran `telemetry`
    (read from the process's user id, not from the environment, which the caller controls)."""
    uid = os.getuid()
    try:
        account = pwd.getpwuid(uid).pw_name
    except KeyError:  # an id without a passwd entry (containers)
        account = f"uid-{uid}"
    return Actor(f"cli:{account}")


# An entry as stored, and as the API serves it (a docstring here would become its description).
class AuditEntry(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    id: int
    at: datetime
    operator: str
    action: str
    target: str
    request_id: str | None
    client_address: str | None
    details: dict[str, Any] | None

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> AuditEntry:
        return cls(**{name: row[name] for name in _COLUMNS})


_COLUMNS: tuple[str, ...] = AuditEntry.__struct_fields__

_RECORD = (
    "INSERT INTO operator_audit (operator, action, target, request_id, client_address, details)"
    # `details` as JSON text: the same on the service's pool (JSON codecs) and on the CLI's plain
    # connection (none).
    " VALUES ($1, $2, $3, $4, $5, $6::text::jsonb)"
)


async def record(
    conn: asyncpg.Connection,
    actor: Actor,
    action: AuditAction,
    target: str,
    details: dict[str, Any] | None = None,
) -> None:
    """One audit row on `conn`: inside the caller's transaction when one is open."""
    text = None if details is None else msgspec.json.encode(details).decode()
    await conn.execute(
        _RECORD, actor.operator, action.value, target, actor.request_id, actor.client_address, text
    )


async def entries(
    conn: asyncpg.Connection,
    *,
    operator: str | None = None,
    action: str | None = None,
    target: str | None = None,
    before: int | None = None,
    limit: int = 100,
) -> list[AuditEntry]:
    """The newest entries matching every given filter, older than the entry `before`."""
    # Only the given filters go into the statement: each shape gets its own plan, so a filter
    # by operator or target is its index's range scan rather than a generic plan's full one.
    args: list[Any] = []
    where: list[str] = []
    given = (("operator = ", operator), ("action = ", action), ("target = ", target), ("id < ", before))
    for condition, value in given:
        if value is not None:
            args.append(value)
            where.append(f"{condition}${len(args)}")
    args.append(limit)
    rows = await conn.fetch(
        f"SELECT {', '.join(_COLUMNS)} FROM operator_audit WHERE {' AND '.join(where) or 'true'}"
        f" ORDER BY id DESC LIMIT ${len(args)}",
        *args,
    )
    return [AuditEntry.from_row(r) for r in rows]
