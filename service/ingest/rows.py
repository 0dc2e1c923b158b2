"""The rows the writer takes, one typed tuple per kind, and what it hands back per row.

Handlers build these; the writer numbers them (`ord`) when it stages a flush, so a row never
carries a placeholder for its position. Field order is the staging table's column order.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, NamedTuple

import asyncpg

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def bucket_start(ts: datetime, bucket_seconds: int) -> datetime:
    """The bucket a heartbeat at `ts` is stored under: the same instant the database computes
    with `date_bin(make_interval(secs => bucket_seconds), ts, 'epoch')` (tests/api/test_bucket.py)."""
    step = timedelta(seconds=bucket_seconds)
    return EPOCH + step * ((ts - EPOCH) // step)


class HeartbeatRow(NamedTuple):
    device_id: str
    ts: datetime
    status: str
    battery_pct: int
    app_version: str | None
    network: str | None
    extra: dict[str, Any] | None


class DispatchRow(NamedTuple):
    request_id: str
    device_id: str
    action: str
    payload: dict[str, Any] | None
    sent_at: datetime
    created_by: int | None


class DownloadRow(NamedTuple):
    """`id` is chosen by the caller (see `api.downloads.event_id`), never by a sequence."""

    id: int
    ts: datetime
    build_id: str
    device_id: str
    token_id: int | None
    outcome: str
    bytes_downloaded: int | None


class AckRow(NamedTuple):
    """A device's acknowledgement of the command `request_id`: `device_id` comes from its
    credential, `ts` (None: the server's clock) from its body."""

    request_id: str
    device_id: str
    status: str
    ts: datetime | None
    result: dict[str, Any] | None
    error: str | None


@dataclass(frozen=True, slots=True)
class DispatchRecord:
    id: int
    request_id: str
    device_id: str | None
    action: str | None
    payload: dict[str, Any] | None
    sent_at: datetime
    status: str

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> DispatchRecord:
        return cls(
            id=row["id"],
            request_id=row["request_id"],
            device_id=row["device_id"],
            action=row["action"],
            payload=row["payload"],
            sent_at=row["sent_at"],
            # The key outlived its dispatch row: retention dropped the dispatch's chunk.
            status=row["status"] if row["status"] is not None else "expired",
        )


@dataclass(frozen=True, slots=True)
class DispatchOutcome:
    """`created`: this row created the dispatch; else `dispatch` is the one already stored
    under its request_id (whoever created it, on whichever instance)."""

    created: bool
    dispatch: DispatchRecord


@dataclass(frozen=True, slots=True)
class CommandRecord:
    """A command as stored (`commands`)."""

    request_id: str
    device_id: str
    command: str
    payload: dict[str, Any] | None
    status: str
    created_at: datetime
    updated_at: datetime
    delivered_at: datetime | None
    executed_at: datetime | None
    failed_at: datetime | None
    expired_at: datetime | None
    result: dict[str, Any] | None
    error: str | None

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> CommandRecord:
        return cls(**{name: row[name] for name in COMMAND_COLUMNS})


COMMAND_COLUMNS = tuple(CommandRecord.__dataclass_fields__)


class AckResult(StrEnum):
    """What an ack did: moved the command forward (`changed`), repeated its current status
    (`unchanged`), contradicted it (`conflict`: backward, another terminal status, or after
    expiry), or named no command of the acking device (`not_found`)."""

    CHANGED = "changed"
    UNCHANGED = "unchanged"
    CONFLICT = "conflict"
    NOT_FOUND = "not_found"


@dataclass(frozen=True, slots=True)
class AckOutcome:
    """`command`: the command's state after the flush (None when `not_found`); `previous`: its
    status before the flush, so a caller can tell the pending → delivered step."""

    result: AckResult
    command: CommandRecord | None = None
    previous: str | None = None
