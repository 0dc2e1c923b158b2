"""The fleet summary: counts by presence, app version, status and battery in one pass.

One statement reads `devices` joined to `device_presence` once and aggregates every count
through GROUPING SETS, all at one `as_of` (the database's clock unless given), so the counts
of one answer add up to the same `total`. Its cost grows with the fleet (one scan of two narrow
tables, independent of heartbeat history; measured at 100,000 devices in
`benchmarks/fleet_view.py`), so the endpoint serves a snapshot (`SummarySnapshot`): at most one
computation per `max_age` per instance, however many operators ask, and the answer's `as_of`
says when it was taken.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta

import asyncpg
import msgspec

from service.fleet.presence import PRESENCE_SQL, PRESENCES


class AppVersionCount(msgspec.Struct, forbid_unknown_fields=True):
    app_version: str
    devices: int


# The answer of `GET /v1/fleet/summary` as it is: the API serves it unchanged (a docstring here
# would become its description in the OpenAPI document).
class FleetSummary(msgspec.Struct, forbid_unknown_fields=True):
    as_of: datetime
    total: int
    # online, offline, never_seen, revoked
    presence: dict[str, int]
    # The 20 most common last app versions; the rest summed in other_app_versions.
    app_versions: list[AppVersionCount]
    other_app_versions: int
    unknown_app_version: int
    # Last status of the devices that sent one.
    statuses: dict[str, int]
    # Last battery: "<15", "15-49", ">=50", "unknown".
    battery: dict[str, int]
    enrolled_last_24h: int
    enrolled_last_7d: int


TOP_APP_VERSIONS = 20
BATTERY_BUCKETS = ("<15", "15-49", ">=50", "unknown")

_SUMMARY = f"""
WITH fleet AS (
    SELECT {PRESENCE_SQL.format(now="$1")} AS presence,
           p.last_app_version AS app_version,
           p.last_status AS status,
           CASE WHEN p.last_battery_pct IS NULL THEN 'unknown'
                WHEN p.last_battery_pct < 15 THEN '<15'
                WHEN p.last_battery_pct < 50 THEN '15-49'
                ELSE '>=50' END AS battery,
           d.enrolled_at
    FROM {{source}} LEFT JOIN device_presence p ON p.device_id = d.id
)
SELECT GROUPING(presence, app_version, status, battery) AS grouping_id,
       presence, app_version, status, battery, count(*) AS devices,
       count(*) FILTER (WHERE enrolled_at > $1 - interval '1 day') AS enrolled_1d,
       count(*) FILTER (WHERE enrolled_at > $1 - interval '7 days') AS enrolled_7d
FROM fleet
GROUP BY GROUPING SETS ((presence), (app_version), (status), (battery), ())
"""

# The whole fleet, or one tag's devices found through the tag's index (the cost is theirs).
_FLEET = _SUMMARY.format(source="devices d")
_TAGGED = _SUMMARY.format(source="device_tags t JOIN devices d ON d.id = t.device_id AND t.tag = $2")

# GROUPING(...) bit masks: a set leaves the bits of the columns it does not group by.
_BY_PRESENCE, _BY_APP_VERSION, _BY_STATUS, _BY_BATTERY, _TOTAL = 0b0111, 0b1011, 0b1101, 0b1110, 0b1111


async def fleet_summary(
    conn: asyncpg.Connection, as_of: datetime | None = None, *, tag: str | None = None
) -> FleetSummary:
    """The counts of the whole fleet, or of the devices tagged `tag`, at `as_of`."""
    if as_of is None:
        as_of = await conn.fetchval("SELECT now()")
    presence = dict.fromkeys(PRESENCES, 0)
    battery = dict.fromkeys(BATTERY_BUCKETS, 0)
    statuses: dict[str, int] = {}
    versions: list[AppVersionCount] = []
    unknown_version = total = enrolled_1d = enrolled_7d = 0
    rows = await (conn.fetch(_FLEET, as_of) if tag is None else conn.fetch(_TAGGED, as_of, tag))
    for row in rows:
        kind, n = row["grouping_id"], row["devices"]
        if kind == _BY_PRESENCE:
            presence[row["presence"]] = n
        elif kind == _BY_APP_VERSION:
            if row["app_version"] is None:
                unknown_version = n
            else:
                versions.append(AppVersionCount(row["app_version"], n))
        elif kind == _BY_STATUS:
            if row["status"] is not None:
                statuses[row["status"]] = n
        elif kind == _BY_BATTERY:
            battery[row["battery"]] = n
        elif kind == _TOTAL:
            total, enrolled_1d, enrolled_7d = n, row["enrolled_1d"], row["enrolled_7d"]
    versions.sort(key=lambda v: (-v.devices, v.app_version))
    top = versions[:TOP_APP_VERSIONS]
    return FleetSummary(
        as_of=as_of,
        total=total,
        presence=presence,
        app_versions=top,
        other_app_versions=sum(v.devices for v in versions[TOP_APP_VERSIONS:]),
        unknown_app_version=unknown_version,
        statuses=dict(sorted(statuses.items(), key=lambda kv: (-kv[1], kv[0]))),
        battery=battery,
        enrolled_last_24h=enrolled_1d,
        enrolled_last_7d=enrolled_7d,
    )


class SummarySnapshot:
    """The last summary this instance computed, served while younger than `max_age`.

    Single flight: when it is too old, one caller recomputes it and concurrent callers wait for
    that result instead of each scanning the fleet. `max_age` zero computes on every call."""

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._summary: FleetSummary | None = None
        self._taken = 0.0

    def _fresh(self, max_age: timedelta) -> FleetSummary | None:
        if self._summary is not None and time.monotonic() - self._taken < max_age.total_seconds():
            return self._summary
        return None

    async def get(self, pool: asyncpg.Pool, max_age: timedelta) -> FleetSummary:
        if (summary := self._fresh(max_age)) is not None:
            return summary
        async with self._lock:
            if (summary := self._fresh(max_age)) is not None:
                return summary
            started = time.monotonic()
            async with pool.acquire() as conn:
                summary = await fleet_summary(conn)
            self._summary, self._taken = summary, started
            return summary
