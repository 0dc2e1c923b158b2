"""A command's lifecycle: its one status enum, the order its statuses move in, and the command
as stored.

`pending → delivered → executed | failed`, `cancelled` when an operator cancels an open command
(`service.commands.cancel`), or `expired` when no terminal ack came within the TTL
(`service.commands.expiry`). Only forward: a status moves to one of higher rank, and nothing
leaves a terminal status (rank `TERMINAL_RANK`). The acks' statement
(`service.commands.acks.MERGE_ACKS`) and its Python reading use the same ranks, derived here; a
cancel is a move through that same statement, so a cancel and an ack racing each other are
serialized by the command's row lock and the one that commits first wins.
The `commands` table's `status_known` check is `CommandStatus.check_constraint()` (a test
compares it with the live database's).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import asyncpg
import msgspec
from msgspec import Meta

from service.commands.pushes import PushState
from service.db.statuses import CheckedStatus


class CommandStatus(CheckedStatus):
    PENDING = "pending"
    DELIVERED = "delivered"
    EXECUTED = "executed"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELLED = "cancelled"

    @property
    def rank(self) -> int:
        return RANKS[self]

    @property
    def terminal(self) -> bool:
        return RANKS[self] == TERMINAL_RANK


# Keyed by the statuses, so their text finds them too (a StrEnum member is its value).
RANKS: dict[str, int] = {
    CommandStatus.PENDING: 0,
    CommandStatus.DELIVERED: 1,
    CommandStatus.EXECUTED: 2,
    CommandStatus.FAILED: 2,
    CommandStatus.EXPIRED: 2,
    CommandStatus.CANCELLED: 2,
}
TERMINAL_RANK = 2

# What a device may ack; what is still open (expiry closes it, an operator may cancel it, the
# stuck list shows it).
ACKED = (CommandStatus.DELIVERED, CommandStatus.EXECUTED, CommandStatus.FAILED)
OPEN = (CommandStatus.PENDING, CommandStatus.DELIVERED)


def rank_sql(expr: str) -> str:
    """SQL for the rank of the status `expr`, as `CommandStatus.rank` has it."""
    below = " ".join(f"WHEN '{s.value}' THEN {s.rank}" for s in CommandStatus if not s.terminal)
    return f"CASE {expr} {below} ELSE {TERMINAL_RANK} END"


# A command as stored (`commands`), and as the API serves it (a docstring here would become its
# description in the OpenAPI document). `push` is read beside it by the operators' reads
# (`service.commands.reads`) and left out where it is not (the device's pull, acks).
class Command(msgspec.Struct, forbid_unknown_fields=True, frozen=True, omit_defaults=True):
    request_id: str
    device_id: str
    command: str
    payload: dict[str, Any] | None
    status: Annotated[str, Meta(description=CommandStatus.description())]
    created_at: datetime
    updated_at: datetime
    delivered_at: datetime | None
    executed_at: datetime | None
    failed_at: datetime | None
    expired_at: datetime | None
    cancelled_at: datetime | None
    result: dict[str, Any] | None
    error: str | None
    created_by: Annotated[
        str | None, Meta(description="The operator who dispatched it (null when that operator is gone)")
    ] = None
    push: PushState | None = None

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> Command:
        return cls(**{name: row[name] for name in COMMAND_COLUMNS})


COMMAND_COLUMNS: tuple[str, ...] = tuple(f for f in Command.__struct_fields__ if f != "push")


def created_by_sql(table: str) -> str:
    """The dispatching operator's name for the `commands` row `table` (its `created_by` id)."""
    return f"(SELECT u.username FROM users u WHERE u.id = {table}.created_by)"


# What a `Command` (without its push) is read from, over `commands`.
COMMAND_SELECT_LIST = ", ".join(
    f"{created_by_sql('commands')} AS created_by" if name == "created_by" else name
    for name in COMMAND_COLUMNS
)
# Every column a `Command` is read from, over `commands` (statements append their conditions).
SELECT_COMMAND = f"SELECT {COMMAND_SELECT_LIST} FROM commands"
