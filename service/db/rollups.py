"""The rollups that keep heartbeat history past the raw window, and the DDL that builds them.

Two tiers, one shape in every storage mode:

* `device_heartbeats_hourly`: per device and hour, the heartbeat count, min/avg/max (and sum)
  battery, counts per status (`ok`, `charging`, `idle`, `low_battery`, anything else in
  `status_other`), the last `app_version` (by `ts`) and the first and last `ts`.
* `fleet_daily`: per day, the devices seen, heartbeats and average battery; computed from the
  hourly rollup (hierarchical), never from raw rows.

Buckets are aligned on UTC midnight: `time_bucket` (TimescaleDB) and `date_bin` from
2000-01-01 UTC agree for every bucket that divides a day.

Two mechanisms build them (`RollupMechanism`):

* `continuous_aggregate` (timescale mode with the TSL license): materialized-only continuous
  aggregates, refreshed by refresh policies and expired by their own retention policies.
* `rollup_table` (postgres mode, and a TimescaleDB build with `timescaledb.license = 'apache'`,
  which has no continuous aggregates): range-partitioned tables, refreshed from a watermark in
  `rollup_watermarks` by the service's maintenance task (`service.retention.rollups`), their
  partitions dropped by their own windows.

The device-history read (`service.api.history`) is served by an index-only scan in both: the
hourly rollup's one `(device_id, hour)` index carries every column the read selects
(`HOURLY_READ_COLUMNS`) in its `INCLUDE` list, so 30 days of a device's hours cost about 30
index pages instead of 720 heap pages read at random. In the table mechanism that index is the
primary key itself; on a continuous aggregate it is `HOURLY_COVERING_INDEX` on the
materialization hypertable (and each of its chunks), which replaces TimescaleDB's group index
`(device_id, hour DESC)`. `cover_hourly` brings a build made before it to that shape.

The guard: raw data is never dropped before it is rolled up. Every rollup re-reads its source
at most `reach` back from now (`start_offset + source chunk interval + schedule`); the source's
window must be at least that long (`GuardError` otherwise). In the table mechanism a source
partition is also kept until the rollup's watermark (minus its look-back) has passed its end.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

from service.db import retained
from service.db.retained import RetainedTable
from service.db.time_series import (
    HEARTBEATS,
    Execute,
    coverage,
    forget_window_sql,
    interval_literal,
    store_window_sql,
)
from service.db.windows import format_window

RollupMechanism = Literal["continuous_aggregate", "rollup_table"]

# date_bin's origin; the same alignment as TimescaleDB's time_bucket for hours and days.
ORIGIN = "timestamptz '2000-01-01 00:00:00+00'"
STATUSES = ("ok", "charging", "idle", "low_battery")
WATERMARKS = "rollup_watermarks"
# The days fleet_daily has not closed yet, kept by the maintenance task (service.retention.recent_days).
RECENT_DAYS = "fleet_daily_recent"


@dataclass(frozen=True, slots=True)
class Rollup:
    """How a rollup (a retained table of the registry, `service.db.retained`) is refreshed."""

    table: RetainedTable
    bucket: timedelta
    source: str
    # The source's chunk/partition interval: retention drops the source in steps of it.
    source_interval: timedelta
    # Refresh: buckets in [now - start_offset, now - end_offset] are (re)materialized every
    # `schedule`. Table mechanism: each round re-reads `lookback` before the watermark, so a
    # late row for a bucket materialized less than `lookback` ago is still counted.
    start_offset: timedelta
    end_offset: timedelta
    schedule: timedelta
    lookback: timedelta

    @property
    def name(self) -> str:
        return self.table.name

    @property
    def time_column(self) -> str:
        return self.table.time_column

    @property
    def interval(self) -> timedelta:
        """This rollup's own chunk/partition interval."""
        return self.table.chunk_interval

    @property
    def default_window(self) -> timedelta:
        return self.table.default_window

    @property
    def reach(self) -> timedelta:
        """How far back from now a refresh may read its source: the source must keep that."""
        return self.start_offset + self.source_interval + self.schedule


HOURLY = Rollup(
    table=retained.HEARTBEATS_HOURLY,
    bucket=timedelta(hours=1),
    source=HEARTBEATS.name,
    source_interval=HEARTBEATS.chunk_interval,
    start_offset=timedelta(days=1),
    end_offset=timedelta(hours=1),
    schedule=timedelta(minutes=30),
    lookback=timedelta(hours=1),
)
FLEET_DAILY = Rollup(
    table=retained.FLEET_DAILY,
    bucket=timedelta(days=1),
    source=HOURLY.name,
    source_interval=HOURLY.interval,
    start_offset=timedelta(days=3),
    end_offset=timedelta(hours=1),
    schedule=timedelta(hours=1),
    lookback=timedelta(days=1),
)
# Every rollup entry of the registry, hourly first (the daily one reads it).
ROLLUPS: tuple[Rollup, ...] = (HOURLY, FLEET_DAILY)
ROLLUP_OF_SOURCE = {r.source: r for r in ROLLUPS}


class GuardError(ValueError):
    """A window would let retention drop source rows a refresh still reads."""


def check_guard(source: str, window: timedelta) -> None:
    """Raise `GuardError` when `source` (a raw table or a rollup) feeds a rollup whose refresh
    reaches further back than `window`; the message names both numbers."""
    rollup = ROLLUP_OF_SOURCE.get(source)
    if rollup is not None and window < rollup.reach:
        raise GuardError(
            f"{source}: window {format_window(window)} is shorter than the {rollup.name} refresh "
            f"reach {format_window(rollup.reach)} (start_offset {format_window(rollup.start_offset)}"
            f" + chunk interval {format_window(rollup.source_interval)} + schedule "
            f"{format_window(rollup.schedule)}): retention would drop rows before they are rolled up"
        )


def check_windows(windows: dict[str, timedelta]) -> None:
    """The guard over every source whose window is in `windows` (at migrate time)."""
    for source in ROLLUP_OF_SOURCE:
        if source in windows:
            check_guard(source, windows[source])


# --- the aggregates, written once for both mechanisms ----------------------------------------

_STATUS_COLUMNS = ",\n".join(
    f"    count(*) FILTER (WHERE status = '{s}') AS status_{s}" for s in STATUSES
) + (",\n    count(*) FILTER (WHERE status NOT IN ({})) AS status_other").format(
    ", ".join(f"'{s}'" for s in STATUSES)
)

# Per device and hour from raw rows. `bucket_start` (the partitioning column) is bucketed, not
# `ts`: the heartbeat bucket divides an hour, so both give the same hour.
HOURLY_SELECT = f"""
    count(*) AS heartbeats,
    min(battery_pct) AS battery_min,
    avg(battery_pct)::double precision AS battery_avg,
    max(battery_pct) AS battery_max,
    sum(battery_pct)::bigint AS battery_sum,
{_STATUS_COLUMNS},
    {{last_app_version}} AS last_app_version,
    min(ts) AS first_ts,
    max(ts) AS last_ts"""

DAILY_SELECT = """
    count(DISTINCT device_id) AS devices_seen,
    sum(heartbeats)::bigint AS heartbeats,
    sum(battery_sum)::bigint AS battery_sum,
    sum(battery_sum)::double precision / sum(heartbeats) AS battery_avg"""


def hourly_select(last_app_version: str) -> str:
    return HOURLY_SELECT.format(last_app_version=last_app_version)


# --- the device-history read's covering index ------------------------------------------------

# Every column the device-history read selects from the hourly rollup besides its key
# (`service.api.history` builds its SELECT list from this tuple: the two cannot drift apart).
HOURLY_READ_COLUMNS: tuple[str, ...] = (
    "heartbeats",
    "battery_min",
    "battery_max",
    "battery_sum",
    *(f"status_{s}" for s in (*STATUSES, "other")),
    "last_app_version",
    "first_ts",
    "last_ts",
)
HOURLY_COVERING_INDEX = f"ix_{HOURLY.name}_covering"
_INCLUDE = f"INCLUDE ({', '.join(HOURLY_READ_COLUMNS)})"
_HOURLY_PK = f"CONSTRAINT pk_{HOURLY.name} PRIMARY KEY (device_id, hour)"
# On a continuous aggregate, CREATE INDEX is redirected to its materialization hypertable (and
# cascades to every chunk, present and future); the index lives in that hypertable's schema.
_CAGG_COVERING = (
    f"CREATE INDEX IF NOT EXISTS {HOURLY_COVERING_INDEX} ON {HOURLY.name} (device_id, hour) {_INCLUDE}"
)
_MAT_INDEXES = f"""
SELECT i.indexrelid::regclass AS ix FROM pg_index i
JOIN pg_class x ON x.oid = i.indexrelid
JOIN timescaledb_information.continuous_aggregates c
  ON i.indrelid = format('%I.%I', c.materialization_hypertable_schema,
                         c.materialization_hypertable_name)::regclass
WHERE c.view_schema = current_schema() AND c.view_name = '{HOURLY.name}'"""


def _drop_mat_indexes(where: str) -> str:
    """Drop the hourly aggregate's materialization indexes matching `where` (over pg_index `i`
    and the index's pg_class `x`)."""
    return f"""
DO $$
DECLARE ix regclass;
BEGIN
    FOR ix IN {_MAT_INDEXES} AND {where} LOOP
        EXECUTE format('DROP INDEX %s', ix);
    END LOOP;
END $$"""


# TimescaleDB's group index, which the covering index makes redundant (same leading key).
_DROP_GROUP_INDEX = _drop_mat_indexes("pg_get_indexdef(i.indexrelid) LIKE '%(device_id, hour DESC)'")


def cover_hourly(execute: Execute, mechanism: RollupMechanism) -> None:
    """Give a build made before the covering index its shape (a no-op on a continuous aggregate
    `create_rollups` built; the table's primary key is rebuilt either way). While the index is
    built, the aggregate's refresh waits (CREATE INDEX takes a SHARE lock); the table's
    ALTER TABLE also holds reads back (ACCESS EXCLUSIVE)."""
    if mechanism == "continuous_aggregate":
        execute(_DROP_GROUP_INDEX)
        execute(_CAGG_COVERING)
    else:
        execute(f"ALTER TABLE {HOURLY.name} DROP CONSTRAINT pk_{HOURLY.name}, ADD {_HOURLY_PK} {_INCLUDE}")


def uncover_hourly(execute: Execute, mechanism: RollupMechanism) -> None:
    """Undo `cover_hourly`: the plain primary key, or TimescaleDB's group index back."""
    if mechanism == "continuous_aggregate":
        execute(_drop_mat_indexes(f"x.relname = '{HOURLY_COVERING_INDEX}'"))
        # The name TimescaleDB gives its group index (<materialization hypertable>_device_id_hour_idx).
        execute(f"CREATE INDEX ON {HOURLY.name} (device_id, hour DESC)")
    else:
        execute(f"ALTER TABLE {HOURLY.name} DROP CONSTRAINT pk_{HOURLY.name}, ADD {_HOURLY_PK}")


# --- continuous aggregates -------------------------------------------------------------------


def _cagg_statements(windows: dict[str, timedelta]) -> list[str]:
    hourly = f"""
CREATE MATERIALIZED VIEW {HOURLY.name}
WITH (timescaledb.continuous, timescaledb.materialized_only = true,
      timescaledb.create_group_indexes = false) AS
SELECT device_id, time_bucket({interval_literal(HOURLY.bucket)}, bucket_start) AS hour,
{hourly_select("last(app_version, ts)")}
FROM {HOURLY.source}
GROUP BY device_id, time_bucket({interval_literal(HOURLY.bucket)}, bucket_start)
WITH NO DATA
"""
    daily = f"""
CREATE MATERIALIZED VIEW {FLEET_DAILY.name}
WITH (timescaledb.continuous, timescaledb.materialized_only = true) AS
SELECT time_bucket({interval_literal(FLEET_DAILY.bucket)}, hour) AS day,
{DAILY_SELECT}
FROM {FLEET_DAILY.source}
GROUP BY time_bucket({interval_literal(FLEET_DAILY.bucket)}, hour)
WITH NO DATA
"""
    # The hourly one's group index (device_id, hour DESC) is replaced by the covering index.
    out = [hourly, _CAGG_COVERING, daily]
    for r in ROLLUPS:
        out += [
            # The materialization hypertable's chunks: the rollup's own retention steps. (Their
            # time indexes, (hour DESC) and (day DESC), are TimescaleDB's.)
            "SELECT set_chunk_time_interval(format('%I.%I', materialization_hypertable_schema, "
            f"materialization_hypertable_name)::regclass, {interval_literal(r.interval)}) "
            f"FROM timescaledb_information.continuous_aggregates WHERE view_name = '{r.name}'",
            f"SELECT add_continuous_aggregate_policy('{r.name}', "
            f"start_offset => {interval_literal(r.start_offset)}, "
            f"end_offset => {interval_literal(r.end_offset)}, "
            f"schedule_interval => {interval_literal(r.schedule)})",
            f"SELECT add_retention_policy('{r.name}', drop_after => {interval_literal(windows[r.name])})",
        ]
    return out


# --- rollup tables -----------------------------------------------------------------------------


def _table_statements(windows: dict[str, timedelta], lookahead: timedelta) -> list[str]:
    status_columns = ",\n".join(f"    status_{s} bigint NOT NULL" for s in (*STATUSES, "other"))
    out = [
        f"""
CREATE TABLE {HOURLY.name} (
    device_id varchar(128) NOT NULL,
    hour timestamptz NOT NULL,
    heartbeats bigint NOT NULL,
    battery_min smallint,
    battery_avg double precision,
    battery_max smallint,
    battery_sum bigint,
{status_columns},
    last_app_version varchar(64),
    first_ts timestamptz,
    last_ts timestamptz,
    {_HOURLY_PK} {_INCLUDE}
) PARTITION BY RANGE (hour)
""",
        f"""
CREATE TABLE {FLEET_DAILY.name} (
    day timestamptz NOT NULL,
    devices_seen bigint NOT NULL,
    heartbeats bigint NOT NULL,
    battery_sum bigint,
    battery_avg double precision,
    CONSTRAINT pk_{FLEET_DAILY.name} PRIMARY KEY (day)
) PARTITION BY RANGE (day)
""",
    ]
    for r in ROLLUPS:
        step = interval_literal(r.interval)
        bounds = coverage(interval_literal(windows[r.name]), interval_literal(lookahead), slack=step)
        out.append(f"SELECT telemetry_ensure_partitions('{r.name}', {step}, {bounds})")
        out.append(f"INSERT INTO {WATERMARKS} (rollup) VALUES ('{r.name}') ON CONFLICT DO NOTHING")
    return out


def create_rollups(
    execute: Execute,
    mechanism: RollupMechanism,
    windows: dict[str, timedelta],
    lookahead: timedelta,
) -> None:
    """Create both rollups with their windows stored in `retention_policies`.

    Raises `GuardError` (before any DDL) when a source window is shorter than the reach of the
    rollup refreshed from it. `rollup_table` needs the partition functions
    (`time_series.create_partition_functions`), which the revision creates on an Apache build.
    """
    check_windows(windows)
    if mechanism == "continuous_aggregate":
        statements = _cagg_statements(windows)
    else:
        statements = _table_statements(windows, lookahead)
    for sql in statements:
        execute(sql)
    for r in ROLLUPS:
        execute(store_window_sql(r.table, windows[r.name]))


def drop_rollups(execute: Execute, mechanism: RollupMechanism) -> None:
    """Undo `create_rollups` (dropping a continuous aggregate removes its policies with it)."""
    for r in reversed(ROLLUPS):
        if mechanism == "continuous_aggregate":
            execute(f"DROP MATERIALIZED VIEW IF EXISTS {r.name}")
        else:
            execute(f"DROP TABLE IF EXISTS {r.name}")
        execute(forget_window_sql(r.table))
        execute(f"DELETE FROM {WATERMARKS} WHERE rollup = '{r.name}'")


# Which mechanism a timescale-mode database uses: continuous aggregates need the TSL license.
LICENSE_SQL = "SELECT current_setting('timescaledb.license', true)"


def mechanism_for(mode: str, license_: str | None) -> RollupMechanism:
    if mode == "timescale" and license_ != "apache":
        return "continuous_aggregate"
    return "rollup_table"


# What the database was built with: a continuous aggregate named like the hourly rollup.
BUILT_MECHANISM_SQL = f"""
SELECT CASE WHEN EXISTS (
    SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relname = '{HOURLY.name}' AND n.nspname = current_schema() AND c.relkind = 'v'
) THEN 'continuous_aggregate' ELSE 'rollup_table' END
"""
