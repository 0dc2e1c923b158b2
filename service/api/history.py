"""`GET /v1/devices/{device_id}/history` and `GET /v1/fleet/history` (operator).

A device's history joins two sources at the hourly rollup's watermark: buckets before it are
read from `device_heartbeats_hourly`, later ones are aggregated from the device's raw
heartbeats, so its newest hour is there at once, before any refresh. The fleet's history is read
from rollups alone (`fleet_daily`, `fleet_daily_recent` for the days it has not closed, the
hourly rollup for 1 h buckets), so its cost does not grow with the fleet's raw rows; it ends at
`materialized_until` (about an hour and a half behind at most with the default policies).
Buckets are whole and aligned on UTC midnight: `from` is floored and `to` is rounded up to the
bucket. Buckets older than the tier's window are absent, and `available_from` says where the
tier's data starts (the request's `from` is moved up to it).

`device_history` and `fleet_history` take a connection and are what the handlers (and the
tests and benchmarks) call.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
from aiohttp import web

from service.api.auth import require_operator
from service.api.errors import not_found, unprocessable
from service.api.parameters import DeviceHistoryQuery, FleetHistoryQuery
from service.api.responses import json_response
from service.api.schemas import (
    DeviceHistory,
    DeviceHistoryBucket,
    FleetHistory,
    FleetHistoryBucket,
)
from service.api.state import services
from service.db.rollups import (
    BUILT_MECHANISM_SQL,
    FLEET_DAILY,
    HOURLY,
    HOURLY_READ_COLUMNS,
    ORIGIN,
    RECENT_DAYS,
    STATUSES,
    Rollup,
    RollupMechanism,
)
from service.retention.rollups import watermark

BUCKETS = {"1h": timedelta(hours=1), "1d": timedelta(days=1)}
DEFAULT_SPAN = {"1h": timedelta(days=2), "1d": timedelta(days=30)}
MAX_BUCKETS = 10_000
_STATUS_KEYS = (*STATUSES, "other")
_EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
_LATEST = datetime(9000, 1, 1, tzinfo=UTC)

# Per device and hour: materialized hours before the watermark ($4), raw rows after it. The
# two never share an hour (the watermark is hour-aligned). The rollup's part is an index-only
# scan: the hourly rollup's (device_id, hour) index INCLUDEs exactly HOURLY_READ_COLUMNS. The raw
# part's columns follow the same order.
_HOURS = f"""
WITH hours AS (
    SELECT hour, {", ".join(HOURLY_READ_COLUMNS)}
    FROM {HOURLY.name}
    WHERE device_id = $1 AND hour >= $2::timestamptz
      AND hour < least($3::timestamptz, coalesce($4::timestamptz, '-infinity'))
    UNION ALL
    SELECT date_bin('1 hour', bucket_start, {ORIGIN}), count(*), min(battery_pct), max(battery_pct),
           sum(battery_pct),
           {", ".join(f"count(*) FILTER (WHERE status = '{s}')" for s in STATUSES)},
           count(*) FILTER (WHERE status NOT IN ({", ".join(f"'{s}'" for s in STATUSES)})),
           (array_agg(app_version ORDER BY ts DESC))[1], min(ts), max(ts)
    FROM device_heartbeats
    WHERE device_id = $1 AND bucket_start < $3
      AND bucket_start >= greatest($2, coalesce($4::timestamptz, '-infinity'))
    GROUP BY 1
)
"""

# 1 h buckets are the hours themselves: no regrouping.
_DEVICE_HOURS = f"""{_HOURS}
SELECT hour AS start, heartbeats, battery_min, battery_max,
       battery_sum::double precision / nullif(heartbeats, 0) AS battery_avg,
       {", ".join(f"status_{s}" for s in _STATUS_KEYS)}, last_app_version, first_ts, last_ts
FROM hours ORDER BY 1
"""

# 1 d buckets: the hours of each day combined.
_DEVICE_DAYS = f"""{_HOURS}
SELECT date_bin('1 day', hour, {ORIGIN}) AS start,
       sum(heartbeats)::bigint AS heartbeats,
       min(battery_min) AS battery_min,
       max(battery_max) AS battery_max,
       sum(battery_sum)::double precision / nullif(sum(heartbeats), 0) AS battery_avg,
       {", ".join(f"sum(status_{s})::bigint AS status_{s}" for s in _STATUS_KEYS)},
       (array_agg(last_app_version ORDER BY last_ts DESC NULLS LAST))[1] AS last_app_version,
       min(first_ts) AS first_ts,
       max(last_ts) AS last_ts
FROM hours GROUP BY 1 ORDER BY 1
"""

# Fleet, 1 d: whole days from fleet_daily before its watermark ($3), then the days it has not
# closed yet from fleet_daily_recent (kept by the maintenance task). Rollups only: no
# count(DISTINCT device_id) over the fleet's hourly rows at read time.
_FLEET_DAYS = f"""
SELECT day AS start, devices_seen, heartbeats, battery_avg FROM {FLEET_DAILY.name}
WHERE day >= $1::timestamptz AND day < least($2::timestamptz, coalesce($3::timestamptz, '-infinity'))
UNION ALL
SELECT day, devices_seen, heartbeats, battery_avg FROM {RECENT_DAYS}
WHERE day >= greatest($1::timestamptz, coalesce($3::timestamptz, '-infinity')) AND day < $2::timestamptz
ORDER BY 1
"""
_RECENT_COVERED = f"SELECT max(covered_until) FROM {RECENT_DAYS}"

# Fleet, 1 h: the hourly rollup before its watermark ($3); a device has one row per hour, so
# devices seen is a count of rows.
_FLEET_HOURS = f"""
SELECT hour AS start, count(*) AS devices_seen, sum(heartbeats)::bigint AS heartbeats,
       sum(battery_sum)::double precision / nullif(sum(heartbeats), 0) AS battery_avg
FROM {HOURLY.name}
WHERE hour >= $1::timestamptz AND hour < least($2::timestamptz, coalesce($3::timestamptz, '-infinity'))
GROUP BY 1 ORDER BY 1
"""

# What a read needs before its query, in one round trip: the server's now, the tier's window,
# the rollup mechanism (which decides how the watermark is read) and whether the device exists.
_CONTEXT = f"""
SELECT now() AS now,
       (SELECT drop_after FROM retention_policies WHERE table_name = $1) AS window,
       ({BUILT_MECHANISM_SQL}) AS mechanism,
       $2::text IS NULL OR EXISTS (SELECT 1 FROM devices WHERE id = $2::text) AS known
"""


def _floor(value: datetime, bucket: timedelta) -> datetime:
    origin = datetime(2000, 1, 1, tzinfo=UTC)
    return origin + ((value - origin) // bucket) * bucket


def _ceil(value: datetime, bucket: timedelta) -> datetime:
    floored = _floor(value, bucket)
    return floored if floored == value else floored + bucket


@dataclass(frozen=True, slots=True)
class _Context:
    now: datetime
    available_from: datetime  # the first whole bucket inside the tier's window
    mechanism: RollupMechanism


async def _context(
    conn: asyncpg.Connection, tier: Rollup, bucket: timedelta, device_id: str | None = None
) -> _Context:
    row = await conn.fetchrow(_CONTEXT, tier.name, device_id)
    if not row["known"]:
        raise not_found(f"no device {device_id!r}", field="device_id")
    window = row["window"] or tier.default_window
    return _Context(row["now"], _ceil(row["now"] - window, bucket), row["mechanism"])


async def device_history(
    conn: asyncpg.Connection,
    device_id: str,
    start: datetime,
    end: datetime,
    bucket: str,
    *,
    enrolled_only: bool = False,
) -> DeviceHistory:
    """`enrolled_only`: raise 404 (`device_id`) for a device that was never enrolled (checked in
    the same round trip as the read's other context)."""
    size = BUCKETS[bucket]
    ctx = await _context(conn, HOURLY, size, device_id if enrolled_only else None)
    kept_from = ctx.available_from
    lo, hi = max(_floor(start, size), kept_from), _ceil(end, size)
    wm = await watermark(conn, ctx.mechanism, HOURLY)
    sql = _DEVICE_DAYS if bucket == "1d" else _DEVICE_HOURS
    rows = await conn.fetch(sql, device_id, lo, hi, wm) if lo < hi else []
    return DeviceHistory(
        device_id=device_id,
        bucket=bucket,
        from_=lo,
        to=hi,
        available_from=kept_from,
        materialized_until=wm,
        buckets=[
            DeviceHistoryBucket(
                start=r["start"],
                heartbeats=r["heartbeats"],
                battery_min=r["battery_min"],
                battery_avg=r["battery_avg"],
                battery_max=r["battery_max"],
                status_counts={s: r[f"status_{s}"] for s in _STATUS_KEYS},
                last_app_version=r["last_app_version"],
                first_ts=r["first_ts"],
                last_ts=r["last_ts"],
            )
            for r in rows
        ],
    )


async def fleet_history(
    conn: asyncpg.Connection, start: datetime, end: datetime, bucket: str
) -> FleetHistory:
    """The fleet's buckets from the rollups alone, up to `materialized_until`: the hourly
    watermark for 1 h buckets; for 1 d, how far `fleet_daily_recent` covers (or the daily
    watermark when it covers nothing newer). The newest data is in the device histories."""
    size = BUCKETS[bucket]
    daily = bucket == "1d"
    tier = FLEET_DAILY if daily else HOURLY
    ctx = await _context(conn, tier, size)
    mechanism, kept_from = ctx.mechanism, ctx.available_from
    lo, hi = max(_floor(start, size), kept_from), _ceil(end, size)
    if daily:
        wm = await watermark(conn, mechanism, FLEET_DAILY)
        covered: datetime | None = await conn.fetchval(_RECENT_COVERED)
        until = covered if covered is not None and (wm is None or covered > wm) else wm
        rows = await conn.fetch(_FLEET_DAYS, lo, hi, wm) if lo < hi else []
    else:
        until = await watermark(conn, mechanism, HOURLY)
        rows = await conn.fetch(_FLEET_HOURS, lo, hi, until) if lo < hi else []
    return FleetHistory(
        bucket=bucket,
        from_=lo,
        to=hi,
        available_from=kept_from,
        materialized_until=until,
        buckets=[
            FleetHistoryBucket(**{name: r[name] for name in FleetHistoryBucket.__struct_fields__})
            for r in rows
        ],
    )


# --- handlers -----------------------------------------------------------------------------------


def _in_range(value: datetime | None, name: str) -> datetime | None:
    if value is not None and not _EARLIEST <= value <= _LATEST:
        raise unprocessable(f"{name} must lie between 1970 and 9000", field=name, code="out_of_range")
    return value


def history_params(params: FleetHistoryQuery, now: datetime) -> tuple[datetime, datetime, str]:
    """`bucket` (1h default, or 1d), `to` (default now), `from` (default a span before `to`),
    each well-formed already (`FleetHistoryQuery`). 422 names a time outside 1970..9000, a range
    that is empty or one of too many buckets."""
    bucket = params.bucket
    end = _in_range(params.to, "to") or now
    start = _in_range(params.from_, "from") or end - DEFAULT_SPAN[bucket]
    if start >= end:
        raise unprocessable("from must be earlier than to", field="from", code="empty_range")
    if (end - start) / BUCKETS[bucket] > MAX_BUCKETS:
        raise unprocessable(
            f"at most {MAX_BUCKETS} buckets per request: narrow from/to or use a larger bucket",
            field="from",
            code="range_too_large",
        )
    return start, end, bucket


async def get_device_history(request: web.Request, params: DeviceHistoryQuery) -> web.Response:
    await require_operator(request)
    device_id = params.device_id
    start, end, bucket = history_params(params, datetime.now(UTC))
    async with services(request).pool.acquire() as conn:
        return json_response(await device_history(conn, device_id, start, end, bucket, enrolled_only=True))


async def get_fleet_history(request: web.Request, params: FleetHistoryQuery) -> web.Response:
    await require_operator(request)
    start, end, bucket = history_params(params, datetime.now(UTC))
    async with services(request).pool.acquire() as conn:
        return json_response(await fleet_history(conn, start, end, bucket))
