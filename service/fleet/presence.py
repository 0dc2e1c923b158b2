"""Presence transitions recorded by maintenance, and the fleet counted by presence.

Every heartbeat flush keeps its devices' deadlines (`device_presence.offline_after`) in its own
transaction (`UPDATE_PRESENCE`, run after the heartbeat merge by `updater`); a device is
offline from that instant on, whether or not anything ran since. Maintenance writes the
`went_offline` events of deadlines that passed (`run_pass`), and counts devices by presence for
the `telemetry_devices` gauges.

Guarantees:
* One `device.went_offline` event per transition, at the exact deadline that passed
  (`occurred_at = offline_after`): `record_went_offline` marks the row (`offline_since =
  offline_after`) and inserts the event in one statement, and only rows not yet marked
  qualify, so two instances, or a pass racing the writer (which records a missing
  `went_offline` itself when the device comes back), never record it twice. Maintenance also
  runs it under `locks.MAINTENANCE`.
* Rows are locked in `device_id` order, as the writer locks them, so a pass and concurrent
  flushes cannot deadlock; a row the writer moved forward meanwhile is re-checked after its
  lock and left alone.
* Bounded: at most `batch_size` devices per statement (found through the pending-deadline
  index, `offline_since IS NULL`), at most `max_batches` statements per call, each its own
  transaction; a backlog is worked off over several rounds.
* The clock is the caller's (`now`), so tests move time without sleeping.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg

from service.ingest.heartbeats import AfterHeartbeats, HeartbeatRow
from service.settings import PresencePolicy

PRESENCES = ("online", "offline", "never_seen", "revoked")

# A device's presence at $now, over `devices d LEFT JOIN device_presence p`. Revocation wins;
# a device without a heartbeat has never been seen; past its deadline it is offline even
# before the went_offline pass recorded it.
PRESENCE_SQL = """CASE
    WHEN d.credential_revoked_at IS NOT NULL THEN 'revoked'
    WHEN p.last_seen_at IS NULL THEN 'never_seen'
    WHEN p.offline_since IS NOT NULL OR p.offline_after <= {now} THEN 'offline'
    ELSE 'online'
END"""

# Presence of the flush's devices, after MERGE_HEARTBEATS in the same transaction: one
# statement for the whole flush. Rows are locked in device_id order (`old`), as the went_offline
# pass locks them too (`service.fleet.presence`), so flushers, instances and maintenance cannot
# deadlock on them. Every staged heartbeat (stored or absorbed) shows the device is there:
# `last_seen_at` moves to the flush's time ($7, default now()), never back. Only heartbeats newer
# (device time) than the newest one already seen move `last_*` and teach the interval, so a late
# or back-filled heartbeat changes history, not presence. The mean of the consecutive gaps
# between distinct times telescopes to span / count, so only the count and the span are needed
# (from the one sort that also finds each device's newest heartbeat); each gap
# is capped at 4x the learned interval (an outage teaches a little, a slower cadence is learned
# over a few beats). Transitions are recorded beside: `went_offline` at the passed deadline if
# the maintenance pass has not recorded it yet, then `came_online` with the gap (also when a
# pass recorded went_offline while this flush's transaction, begun just before the deadline,
# was running: every went_offline is followed by a came_online), and `app_version_changed`.
# Devices without a presence row (not enrolled) are left alone.
_UPDATE = """
WITH clock AS (
    SELECT coalesce($7::timestamptz, now()) AS now
), old AS MATERIALIZED (
    SELECT device_id, last_seen_at, last_ts, last_app_version, learned_interval_seconds, gaps_seen,
           expected_interval_seconds, offline_after, offline_since
    FROM device_presence
    WHERE device_id = ANY($8::text[])
    ORDER BY device_id
    FOR UPDATE
), fresh AS (
    SELECT s.device_id, s.ts, s.status, s.battery_pct, s.app_version, s.network,
           lead(s.ord) OVER w IS NULL AS newest,
           dense_rank() OVER (PARTITION BY s.device_id ORDER BY s.ts) AS distinct_ts,
           first_value(s.ts) OVER w AS first_ts
    FROM stage_heartbeats s JOIN old o USING (device_id)
    WHERE o.last_ts IS NULL OR s.ts > o.last_ts
    WINDOW w AS (PARTITION BY s.device_id ORDER BY s.ts, s.ord)
), newest AS (
    -- Per device, its newest fresh heartbeat (the last staged of equal times), which also
    -- carries the count of distinct fresh times and the oldest one: one sort for all three.
    SELECT device_id, ts, status, battery_pct, app_version, network, distinct_ts, first_ts
    FROM fresh WHERE newest
), gaps AS (
    SELECT w.device_id,
           w.distinct_ts - CASE WHEN o.last_ts IS NULL THEN 1 ELSE 0 END AS n,
           extract(epoch FROM w.ts - coalesce(o.last_ts, w.first_ts))::float8 AS span
    FROM newest w JOIN old o USING (device_id)
), learned AS (
    SELECT o.device_id, o.gaps_seen + coalesce(g.n, 0) AS gaps_seen,
           CASE WHEN coalesce(g.n, 0) = 0 THEN o.learned_interval_seconds
                ELSE least(greatest(
                    CASE WHEN o.learned_interval_seconds IS NULL THEN g.span / g.n
                         ELSE o.learned_interval_seconds + (1 - power(1 - $6::float8, g.n))
                              * (least(g.span / g.n, 4 * o.learned_interval_seconds)
                                 - o.learned_interval_seconds)
                    END, $1::float8), 86400)
           END AS learned_interval_seconds
    FROM old o LEFT JOIN gaps g USING (device_id)
), next AS (
    -- The new presence, and the old beside it (`was_*`): what the event log compares.
    SELECT l.device_id, l.gaps_seen, l.learned_interval_seconds,
           CASE WHEN l.gaps_seen >= $5::int THEN l.learned_interval_seconds ELSE $2::float8 END
               AS expected,
           greatest(o.last_seen_at, c.now) AS last_seen_at,
           c.now, o.last_seen_at AS was_seen_at, o.offline_after AS was_offline_after,
           o.offline_since AS was_offline_since, o.expected_interval_seconds AS was_expected,
           o.last_app_version AS was_app_version
    FROM learned l JOIN old o USING (device_id) CROSS JOIN clock c
), updated AS (
    UPDATE device_presence p SET
        last_seen_at = n.last_seen_at,
        last_ts = CASE WHEN w.device_id IS NULL THEN p.last_ts ELSE w.ts END,
        last_status = CASE WHEN w.device_id IS NULL THEN p.last_status ELSE w.status END,
        last_battery_pct = CASE WHEN w.device_id IS NULL THEN p.last_battery_pct ELSE w.battery_pct END,
        last_app_version = CASE WHEN w.device_id IS NULL THEN p.last_app_version ELSE w.app_version END,
        last_network = CASE WHEN w.device_id IS NULL THEN p.last_network ELSE w.network END,
        learned_interval_seconds = n.learned_interval_seconds,
        gaps_seen = n.gaps_seen,
        expected_interval_seconds = n.expected,
        offline_after = n.last_seen_at + make_interval(secs => greatest($3::int * n.expected, $4::float8)),
        offline_since = NULL
    FROM next n LEFT JOIN newest w USING (device_id)
    WHERE p.device_id = n.device_id
    RETURNING p.device_id, n.now, n.was_seen_at, n.was_offline_after, n.was_offline_since,
              n.was_expected, n.was_app_version, w.app_version
)"""
# The event log (`service.events.catalogue` documents each payload), in the same statement: a
# presence change never commits without its event. It reads the update's own output (old and
# new side by side), so a flush in which nothing changes costs it one filter over those rows:
# no join and no sort. (Reading `old` and `newest` again took 26 ms of a 5,000-device flush
# statement of about 160 ms; this takes 1.5 ms: EXPLAIN ANALYZE, `benchmarks/event_cost.py`.)
_TRANSITIONS = """, transitions AS (
    INSERT INTO events (device_id, type, payload, occurred_at)
    SELECT device_id, event_type, details, at FROM (
        SELECT u.device_id, 1 AS step, 'device.went_offline' AS event_type, u.was_offline_after AS at,
               jsonb_build_object('last_seen_at', u.was_seen_at,
                                  'expected_interval_seconds', u.was_expected) AS details
        FROM updated u
        WHERE u.was_offline_since IS NULL AND u.was_offline_after <= u.now
        UNION ALL
        SELECT u.device_id, 2, 'device.came_online', greatest(u.now, u.was_offline_after),
               jsonb_build_object('offline_since', coalesce(u.was_offline_since, u.was_offline_after),
                                  'last_seen_at', u.was_seen_at,
                                  'gap_seconds', extract(epoch FROM u.now - u.was_seen_at)::float8)
        FROM updated u
        WHERE u.was_offline_since IS NOT NULL OR u.was_offline_after <= u.now
        UNION ALL
        SELECT u.device_id, 3, 'device.app_version_changed', u.now,
               jsonb_build_object('from', u.was_app_version, 'to', u.app_version)
        FROM updated u
        WHERE u.was_app_version IS NOT NULL AND u.app_version IS NOT NULL
          AND u.app_version <> u.was_app_version
    ) t
    ORDER BY device_id, step
    RETURNING 1
)
"""
UPDATE_PRESENCE = (
    _UPDATE
    + _TRANSITIONS
    + "\nSELECT (SELECT count(*) FROM updated) AS devices, (SELECT count(*) FROM transitions) AS events\n"
)
# The same without the event log: what `benchmarks/event_cost.py` measures it against.
UPDATE_PRESENCE_WITHOUT_EVENTS = _UPDATE + "\nSELECT (SELECT count(*) FROM updated) AS devices, 0 AS events\n"

BATCH_SIZE = 10_000
MAX_BATCHES = 10

_WENT_OFFLINE = """
WITH due AS (
    SELECT device_id FROM device_presence
    WHERE offline_since IS NULL AND offline_after <= $1
    ORDER BY device_id
    LIMIT $2
    FOR UPDATE
), marked AS (
    UPDATE device_presence p SET offline_since = p.offline_after
    FROM due
    WHERE p.device_id = due.device_id AND p.offline_since IS NULL AND p.offline_after <= $1
    RETURNING p.device_id, p.offline_after, p.last_seen_at, p.expected_interval_seconds
)
INSERT INTO events (device_id, type, payload, occurred_at)
SELECT device_id, 'device.went_offline',
       jsonb_build_object('last_seen_at', last_seen_at, 'expected_interval_seconds',
                          expected_interval_seconds),
       offline_after
FROM marked
ORDER BY offline_after, device_id
"""

_COUNTS = f"""
SELECT {PRESENCE_SQL.format(now="$1")} AS presence, count(*) AS devices
FROM devices d LEFT JOIN device_presence p ON p.device_id = d.id
GROUP BY 1
"""


@dataclass(frozen=True, slots=True)
class PresencePass:
    """What one pass did: `went_offline` events recorded; `finished` False when `max_batches`
    ran full (more deadlines passed than one call records)."""

    went_offline: int
    finished: bool
    counts: dict[str, int] = field(default_factory=dict)


async def record_went_offline(
    conn: asyncpg.Connection,
    now: datetime | None = None,
    *,
    batch_size: int = BATCH_SIZE,
    max_batches: int = MAX_BATCHES,
) -> tuple[int, bool]:
    """Record `went_offline` for every device whose deadline passed by `now` (default: the
    database's clock); returns (events recorded, whether none is left)."""
    if now is None:
        now = await conn.fetchval("SELECT now()")
    recorded = 0
    for _ in range(max_batches):
        status = await conn.execute(_WENT_OFFLINE, now, batch_size)
        count = int(status.rsplit(" ", 1)[-1])
        recorded += count
        if count < batch_size:
            return recorded, True
    return recorded, False


async def count_by_presence(conn: asyncpg.Connection, now: datetime | None = None) -> dict[str, int]:
    """Devices per presence at `now` (default: the database's clock); every presence listed."""
    if now is None:
        now = await conn.fetchval("SELECT now()")
    counts = dict.fromkeys(PRESENCES, 0)
    for row in await conn.fetch(_COUNTS, now):
        counts[row["presence"]] = row["devices"]
    return counts


async def run_pass(
    conn: asyncpg.Connection, now: datetime | None = None, *, max_batches: int = MAX_BATCHES
) -> PresencePass:
    """The maintenance step: transitions recorded, then the fleet counted at the same `now`."""
    if now is None:
        now = await conn.fetchval("SELECT now()")
    recorded, finished = await record_went_offline(conn, now, max_batches=max_batches)
    return PresencePass(recorded, finished, await count_by_presence(conn, now))


async def update_presence(
    conn: asyncpg.Connection,
    rows: Sequence[HeartbeatRow],
    bucket_seconds: int,
    policy: PresencePolicy,
    now: datetime | None = None,
) -> None:
    """After `ingest.heartbeats.merge_heartbeats(rows)` in the same transaction: the presence of every device
    staged in it (see UPDATE_PRESENCE). The devices are also passed as an array, so that their
    presence rows are found by primary key whatever the planner guesses of the staging table
    (it has no statistics). `now` stands for the database's clock in tests."""
    await conn.execute(
        UPDATE_PRESENCE,
        float(bucket_seconds),
        policy.default_interval.total_seconds(),
        policy.missed_beats,
        policy.min_offline.total_seconds(),
        policy.min_gaps,
        policy.learning_rate,
        now,
        list({row.device_id for row in rows}),  # `old` locks them in device_id order itself
    )


def updater(
    bucket_seconds: int, policy: PresencePolicy, clock: Callable[[], datetime] | None = None
) -> AfterHeartbeats:
    """The step the heartbeat merge runs after storing a flush (`ingest.heartbeats.merge`):
    `update_presence` of its rows. `clock` stands for the database's clock (tests)."""

    async def update(conn: asyncpg.Connection, rows: Sequence[HeartbeatRow]) -> None:
        await update_presence(conn, rows, bucket_seconds, policy, None if clock is None else clock())

    return update
