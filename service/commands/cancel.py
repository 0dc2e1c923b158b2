"""An operator's cancel: an open command (`pending` or `delivered`) becomes `cancelled`.

Guarantees:
* One rule: the cancel is a row of status `cancelled` through the acks' own statement
  (`service.commands.acks.MERGE_ACKS`), so it moves a command only forward by the ranks of
  `service.commands.lifecycle`. A cancel and a device's ack of the same command take the same
  row lock: whichever commits first wins, and the other sees its status (an `executed` ack
  after a cancel is a conflict, a cancel after `executed` is one too).
* Same transaction: the move, its `command.cancelled` event and whatever the caller writes on
  the same connection (the audit row) commit together or not at all. The caller opens the
  transaction; the staging table empties at its commit.
* The device's pull (`GET /v1/device/commands`, pending only) no longer lists a cancelled
  command, and expiry never touches it (it is not open).
"""

from __future__ import annotations

import asyncpg

from service.commands.acks import AckOutcome, AckResult, AckRow, merge_acks
from service.commands.lifecycle import CommandStatus

_DEVICE_OF = "SELECT device_id FROM commands WHERE request_id = $1"


async def cancel_command(conn: asyncpg.Connection, request_id: str, *, by: str) -> AckOutcome:
    """Cancel the command `request_id` on behalf of operator `by`, inside the caller's
    transaction. `CHANGED`: it was open and is now cancelled; `UNCHANGED`: it was already
    cancelled; `CONFLICT`: it had ended otherwise (executed, failed, expired); `NOT_FOUND`: no
    such command. Raises if no transaction is open (the move would not be staged)."""
    if not conn.is_in_transaction():
        raise RuntimeError("cancel_command needs the caller's transaction")
    device_id = await conn.fetchval(_DEVICE_OF, request_id)
    if device_id is None:
        return AckOutcome(AckResult.NOT_FOUND)
    row = AckRow(request_id, device_id, CommandStatus.CANCELLED, None, None, None, by)
    (outcome,) = await merge_acks(conn, [row])
    return outcome
