"""The operators' command reads: each command with its push (`service.commands.pushes`)."""

from __future__ import annotations

import asyncpg
import msgspec

from service.commands.lifecycle import COMMAND_SELECT_LIST, Command
from service.commands.pushes import PUSH_COLUMNS, PUSH_JOIN, PushState

# Append `WHERE …` over the commands' own columns, unqualified (the push's are `push_*`).
SELECT_COMMAND_WITH_PUSH = f"SELECT {COMMAND_SELECT_LIST}, {PUSH_COLUMNS} FROM commands {PUSH_JOIN}"


def command_with_push(row: asyncpg.Record) -> Command:
    """A `SELECT_COMMAND_WITH_PUSH` row as the command with its push."""
    return msgspec.structs.replace(Command.from_row(row), push=PushState.from_row(row))
