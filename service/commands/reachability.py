"""Push reachability of one device: how long its pushes take to arrive, and how many are stuck.

Read from `commands` only, through the device's own index ranges: the latest 20 delivered
commands by `(device_id, created_at)` and the still-pending ones by the partial pending index, so
the cost does not grow with the fleet or with the device's history.
"""

from __future__ import annotations

from datetime import timedelta

import asyncpg

from service.api.schemas import PushReachability

SAMPLES = 20

_QUERY = f"""
SELECT count(*) AS samples,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY delay) AS p50,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY delay) AS p95,
       (SELECT count(*) FROM commands
        WHERE device_id = $1 AND status = 'pending' AND created_at < now() - $2::interval) AS stuck
FROM (
    SELECT extract(epoch FROM delivered_at - created_at)::float8 AS delay FROM commands
    WHERE device_id = $1 AND delivered_at IS NOT NULL ORDER BY created_at DESC LIMIT {SAMPLES}
) latest
"""


async def push_reachability(
    conn: asyncpg.Connection, device_id: str, stuck_after: timedelta
) -> PushReachability:
    """Dispatch → delivered p50/p95 over the device's last `SAMPLES` delivered commands (None
    without any), and its commands pending for longer than `stuck_after`."""
    row = await conn.fetchrow(_QUERY, device_id, stuck_after)
    return PushReachability(
        samples=row["samples"],
        delivery_p50_seconds=row["p50"],
        delivery_p95_seconds=row["p95"],
        stuck_commands=row["stuck"],
        stuck_after_seconds=stuck_after.total_seconds(),
    )
