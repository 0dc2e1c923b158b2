"""Push reachability of one device: whether pushes can reach it, how long they take, how many
commands are stuck.

Read from `commands` through the device's own index ranges (the latest 20 delivered commands by
`(device_id, created_at)`, the still-pending ones by the partial pending index), its latest 20
commands' pushes by their primary key, and its registration token by its key, so the cost does
not grow with the fleet or with the device's history.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

import asyncpg
import msgspec
from msgspec import Meta

from service.commands.lifecycle import CommandStatus

SAMPLES = 20
# The device's push channel as of now (`status`).
NOT_CONFIGURED = "not_configured"  # this service has no FCM credentials: devices pull only
NO_TOKEN = "no_token"  # the device reported no registration token, or FCM called it unregistered
REGISTERED = "registered"

_Seconds = Annotated[float | None, Meta(description="None without samples")]


class PushReachability(msgspec.Struct, forbid_unknown_fields=True):
    """How well pushes reach the device: whether one can be sent (`status`), dispatch → delivered
    over its last delivered commands, dispatch → pushed and pushed → delivered over its last
    commands, and its commands still pending past `stuck_after_seconds` (a dead push channel
    shows here)."""

    samples: Annotated[int, Meta(description="Delivered commands measured (at most 20, the latest)")]
    delivery_p50_seconds: float | None
    delivery_p95_seconds: float | None
    stuck_commands: int
    stuck_after_seconds: float
    status: Annotated[
        str,
        Meta(
            description="not_configured (no FCM: devices pull only), no_token (none reported, or FCM"
            " called it unregistered) or registered"
        ),
    ] = NOT_CONFIGURED
    pushed_samples: Annotated[
        int, Meta(description="Of the device's last 20 commands, those FCM accepted a push for")
    ] = 0
    pushed_p50_seconds: Annotated[_Seconds, Meta(description="Dispatch → FCM accepted the push, p50")] = None
    pushed_p95_seconds: Annotated[_Seconds, Meta(description="Dispatch → FCM accepted the push, p95")] = None
    push_to_delivered_p50_seconds: Annotated[
        _Seconds, Meta(description="Push accepted → the device acked delivered, p50")
    ] = None
    push_to_delivered_p95_seconds: Annotated[
        _Seconds, Meta(description="Push accepted → the device acked delivered, p95")
    ] = None


_QUERY = f"""
SELECT count(*) AS samples,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY delay) AS p50,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY delay) AS p95,
       (SELECT count(*) FROM commands
        WHERE device_id = $1 AND status = '{CommandStatus.PENDING}'
          AND created_at < now() - $2::interval) AS stuck,
       (SELECT EXISTS (SELECT 1 FROM device_push_tokens t
                       WHERE t.device_id = $1 AND t.invalid_at IS NULL)) AS has_token
FROM (
    SELECT extract(epoch FROM delivered_at - created_at)::float8 AS delay FROM commands
    WHERE device_id = $1 AND delivered_at IS NOT NULL ORDER BY created_at DESC LIMIT {SAMPLES}
) latest
"""
# The latest commands' pushes, each found by its primary key from the command's row.
_PUSHED = f"""
SELECT count(pushed) AS samples,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY pushed) AS pushed_p50,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY pushed) AS pushed_p95,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY arrived) AS arrived_p50,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY arrived) AS arrived_p95
FROM (
    SELECT extract(epoch FROM p.pushed_at - c.created_at)::float8 AS pushed,
           extract(epoch FROM c.delivered_at - p.pushed_at)::float8 AS arrived
    FROM (SELECT id, device_id, created_at, delivered_at FROM commands
          WHERE device_id = $1 ORDER BY created_at DESC LIMIT {SAMPLES}) c
    JOIN command_pushes p ON p.id = c.id AND p.device_id = c.device_id
    WHERE p.pushed_at IS NOT NULL
) latest
"""


async def push_reachability(
    conn: asyncpg.Connection, device_id: str, stuck_after: timedelta, *, push_configured: bool = False
) -> PushReachability:
    """Dispatch → delivered p50/p95 over the device's last `SAMPLES` delivered commands (None
    without any), dispatch → pushed and pushed → delivered over its last `SAMPLES` commands'
    accepted pushes, its commands pending for longer than `stuck_after`, and whether a push can
    be sent to it now (`push_configured`: this service has FCM credentials)."""
    row = await conn.fetchrow(_QUERY, device_id, stuck_after)
    pushed = await conn.fetchrow(_PUSHED, device_id)
    if not push_configured:
        status = NOT_CONFIGURED
    else:
        status = REGISTERED if row["has_token"] else NO_TOKEN
    return PushReachability(
        samples=row["samples"],
        delivery_p50_seconds=row["p50"],
        delivery_p95_seconds=row["p95"],
        stuck_commands=row["stuck"],
        stuck_after_seconds=stuck_after.total_seconds(),
        status=status,
        pushed_samples=pushed["samples"],
        pushed_p50_seconds=pushed["pushed_p50"],
        pushed_p95_seconds=pushed["pushed_p95"],
        push_to_delivered_p50_seconds=pushed["arrived_p50"],
        push_to_delivered_p95_seconds=pushed["arrived_p95"],
    )
