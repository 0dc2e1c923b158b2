"""`retention.problem_raised` / `retention.problem_cleared`: retention health, as events on a
change of state only.

The state is the log itself: the newest of the two events says whether a problem was last
raised or cleared. Maintenance calls `record_change` after each health assessment, under its
advisory lock, so one instance at a time compares and writes (and the compare and the write are
one transaction). A problem that outlives the event log's window is raised again once its
`problem_raised` event has expired, as a reminder that it is still there.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from service.events import log
from service.events.catalogue import RetentionProblemCleared, RetentionProblemRaised

_LAST = """
SELECT type, payload FROM events
WHERE device_id = '' AND type = ANY($1::text[])
ORDER BY occurred_at DESC, id DESC LIMIT 1
"""


async def record_change(conn: asyncpg.Connection, problems: Sequence[str]) -> str | None:
    """Write `retention.problem_raised` when there are problems and the last word was not a
    raise, `retention.problem_cleared` when there are none and it was; the type written, or
    None when the state did not change."""
    async with conn.transaction():
        last = await conn.fetchrow(_LAST, [RetentionProblemRaised.TYPE, RetentionProblemCleared.TYPE])
        raised = last is not None and last["type"] == RetentionProblemRaised.TYPE
        if problems and not raised:
            event: RetentionProblemRaised | RetentionProblemCleared = RetentionProblemRaised(
                problems=list(problems)
            )
        elif not problems and raised:
            assert last is not None
            event = RetentionProblemCleared(problems=list(last["payload"].get("problems", [])))
        else:
            return None
        await log.record(conn, event)
        return event.TYPE
