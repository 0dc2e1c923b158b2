"""Command acks as the writer stores them: the row, its staging, its merge (the ack state
machine, set-based) and what it hands back per row.

The transitions follow `service.commands.lifecycle` (its ranks, in SQL and in Python alike):
forward only, the furthest ack of a flush applied, a transition's event in the same statement.
An operator's cancel (`service.commands.cancel`) is one more row through the same statement
(status `cancelled`, `by` naming the operator), so the rule lives here once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, NamedTuple

import asyncpg

from service.commands.lifecycle import (
    RANKS,
    TERMINAL_RANK,
    Command,
    CommandStatus,
    created_by_sql,
    rank_sql,
)
from service.ingest.writer import Merge, RowMerge, Stage


class AckRow(NamedTuple):
    """A device's acknowledgement of the command `request_id`: `device_id` comes from its
    credential, `ts` (None: the server's clock) from its body. A cancel is the row of status
    `cancelled` with `by`, the cancelling operator's name (None for every device ack)."""

    request_id: str
    device_id: str
    status: str
    ts: datetime | None
    result: dict[str, Any] | None
    error: str | None
    by: str | None = None


STAGE = Stage.of(AckRow, "stage_acks")


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
    command: Command | None = None
    previous: str | None = None


# A device's acks, set-based and forward only. Per (command, device) the flush's furthest ack is
# the candidate; `locked` takes the command's row lock first (FOR UPDATE re-reads the latest
# committed version under READ COMMITTED, so two instances acking the same command serialize
# and the second sees the first's status), and the UPDATE applies only a forward move, by the
# ranks of `service.commands.lifecycle` (pending 0 < delivered 1 < executed | failed 2): an ack
# moves a command only to a higher rank, so nothing leaves a terminal status (expired and
# cancelled included). A cancel sets `cancelled_at`, never `delivered_at`: it did not reach the
# device.
# A transition's time is the device's `ts`, held between the dispatch and now (a wrong device
# clock cannot put it before the command existed or in the future). Skipping
# `delivered` (an executed ack first) sets `delivered_at` too: the command was delivered.
# Returns, per acked command, its status before the flush, whether it moved, and its state now.
MERGE_ACKS = f"""
WITH staged AS (
    SELECT *, {rank_sql("status")} AS rank FROM stage_acks
), target AS (
    SELECT DISTINCT ON (request_id, device_id) * FROM staged
    ORDER BY request_id, device_id, rank DESC, ord
), locked AS (
    SELECT c.id, c.status AS previous, c.request_id, c.device_id, c.command, c.payload, c.status,
           c.created_at, c.updated_at, c.delivered_at, c.executed_at, c.failed_at, c.expired_at,
           c.cancelled_at, c.result, c.error, {created_by_sql("c")} AS created_by
    FROM commands c JOIN target t ON c.request_id = t.request_id AND c.device_id = t.device_id
    FOR UPDATE OF c
), moves AS (
    SELECT l.id, l.previous, t.status, t.rank, t.result, t.error, t.by,
           least(greatest(coalesce(t.ts, now()), l.created_at), now()) AS at
    FROM locked l JOIN target t ON l.request_id = t.request_id AND l.device_id = t.device_id
    WHERE t.rank > {rank_sql("l.previous")}
), updated AS (
    UPDATE commands c SET
        status = m.status,
        delivered_at = CASE WHEN m.status = '{CommandStatus.CANCELLED}' THEN c.delivered_at
                            ELSE coalesce(c.delivered_at, m.at) END,
        executed_at = CASE WHEN m.status = '{CommandStatus.EXECUTED}' THEN m.at ELSE c.executed_at END,
        failed_at = CASE WHEN m.status = '{CommandStatus.FAILED}' THEN m.at ELSE c.failed_at END,
        cancelled_at = CASE WHEN m.status = '{CommandStatus.CANCELLED}' THEN m.at ELSE c.cancelled_at END,
        result = CASE WHEN m.rank = {TERMINAL_RANK} THEN m.result ELSE c.result END,
        error = CASE WHEN m.rank = {TERMINAL_RANK} THEN m.error ELSE c.error END,
        updated_at = now()
    FROM moves m
    WHERE c.id = m.id
    RETURNING c.id, m.previous, m.by, c.request_id, c.device_id, c.command, c.payload, c.status,
              c.created_at, c.updated_at, c.delivered_at, c.executed_at, c.failed_at, c.expired_at,
              c.cancelled_at, c.result, c.error, {created_by_sql("c")} AS created_by
), recorded AS (
    -- One event per move (`command.delivered|executed|failed|cancelled`, see `service.events.catalogue`),
    -- in this statement: a command never moves without its event. Ordered so ids follow the
    -- commands' lock order.
    INSERT INTO events (device_id, type, payload, occurred_at)
    SELECT u.device_id, 'command.' || u.status,
           jsonb_build_object('request_id', u.request_id, 'command', u.command, 'previous', u.previous)
           || CASE u.status WHEN '{CommandStatus.EXECUTED}' THEN jsonb_build_object('result', u.result)
                            WHEN '{CommandStatus.FAILED}' THEN jsonb_build_object('error', u.error)
                            WHEN '{CommandStatus.CANCELLED}' THEN jsonb_build_object('by', u.by)
                            ELSE '{{}}'::jsonb END,
           CASE u.status WHEN '{CommandStatus.DELIVERED}' THEN u.delivered_at
                         WHEN '{CommandStatus.EXECUTED}' THEN u.executed_at
                         WHEN '{CommandStatus.CANCELLED}' THEN u.cancelled_at
                         ELSE u.failed_at END
    FROM updated u
    ORDER BY u.request_id, u.device_id
)
-- (`previous` travels through the UPDATE's RETURNING: no join of two CTEs, whose sizes the
-- planner cannot estimate, on the write path.)
SELECT true AS changed, previous, request_id, device_id, command, payload, status, created_at,
       updated_at, delivered_at, executed_at, failed_at, expired_at, cancelled_at, result, error,
       created_by
FROM updated
UNION ALL
SELECT false, l.previous, l.request_id, l.device_id, l.command, l.payload, l.status, l.created_at,
       l.updated_at, l.delivered_at, l.executed_at, l.failed_at, l.expired_at, l.cancelled_at,
       l.result, l.error, l.created_by
FROM locked l WHERE l.id NOT IN (SELECT id FROM updated)
"""


async def merge_acks(conn: asyncpg.Connection, rows: Sequence[AckRow]) -> list[AckOutcome]:
    """Per row: whether it moved its command forward, repeated its status, contradicted it,
    or named no command of its device; and the command's state after the flush.

    Several acks of one command in one flush: the furthest is applied, and a nearer one on
    its way (a `delivered` before an `executed`) counts as changed too, as if applied first."""
    await STAGE.copy(conn, rows)
    found: dict[tuple[str, str], tuple[bool, str, Command]] = {
        (r["request_id"], r["device_id"]): (r["changed"], r["previous"], Command.from_row(r))
        for r in await conn.fetch(MERGE_ACKS)
    }
    outcomes: list[AckOutcome] = []
    for row in rows:
        entry = found.get((row.request_id, row.device_id))
        if entry is None:
            outcomes.append(AckOutcome(AckResult.NOT_FOUND))
            continue
        changed, previous, command = entry
        if (
            changed
            and RANKS[row.status] > RANKS[previous]
            and (row.status == command.status or row.status == CommandStatus.DELIVERED)
        ):
            result = AckResult.CHANGED
        elif row.status == command.status:
            result = AckResult.UNCHANGED
        else:
            result = AckResult.CONFLICT
        outcomes.append(AckOutcome(result, command, previous))
    return outcomes


def _moved(outcomes: list[AckOutcome]) -> int:
    return sum(outcome.result is AckResult.CHANGED for outcome in outcomes)


MERGE: Merge[AckRow, AckOutcome] = RowMerge(AckRow, "command acks", "commands", STAGE, merge_acks, _moved)
