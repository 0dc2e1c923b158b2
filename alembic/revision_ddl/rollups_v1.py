"""Heartbeat rollups as revision e31c9e0a6175 (20251106) built them, in both mechanisms.

A frozen copy (see `revision_ddl`) of `service/db/rollups.py` as that revision used it:
`device_heartbeats_hourly` (per device and hour) and `fleet_daily` (per day, from the hourly
one), as materialized-only continuous aggregates with refresh and retention policies
(`continuous_aggregate`: timescale mode, TSL license) or as range-partitioned rollup tables
refreshed by the service from `rollup_watermarks` (`rollup_table`: postgres mode, and an
Apache-only TimescaleDB). The hourly rollup's index here is TimescaleDB's group index
`(device_id, hour DESC)` or the plain primary key; `hourly_covering_v1` (revision
b7c1e4d9f2a6) replaces it with the covering one.

The guard: raw data is never dropped before it is rolled up. A refresh re-reads its source at
most `reach` back from now (`start_offset + source chunk interval + schedule`); a source window
shorter than that fails the migration (`GuardError`) before any DDL.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

from revision_ddl.time_series_v1 import HEARTBEATS, Execute, coverage, interval_literal

RollupMechanism = Literal["continuous_aggregate", "rollup_table"]

STATUSES = ("ok", "charging", "idle", "low_battery")
WATERMARKS = "rollup_watermarks"


@dataclass(frozen=True, slots=True)
class Rollup:
    name: str
    time_column: str
    bucket: timedelta
    source: str
    # The source's chunk/partition interval: retention drops the source in steps of it.
    source_interval: timedelta
    interval: timedelta  # this rollup's own chunk/partition interval
    # Refresh: buckets in [now - start_offset, now - end_offset] are (re)materialized every
    # `schedule`.
    start_offset: timedelta
    end_offset: timedelta
    schedule: timedelta

    @property
    def reach(self) -> timedelta:
        """How far back from now a refresh may read its source: the source must keep that."""
        return self.start_offset + self.source_interval + self.schedule


HOURLY = Rollup(
    name="device_heartbeats_hourly",
    time_column="hour",
    bucket=timedelta(hours=1),
    source=HEARTBEATS.name,
    source_interval=HEARTBEATS.chunk_interval,
    interval=timedelta(days=7),
    start_offset=timedelta(days=1),
    end_offset=timedelta(hours=1),
    schedule=timedelta(minutes=30),
)
FLEET_DAILY = Rollup(
    name="fleet_daily",
    time_column="day",
    bucket=timedelta(days=1),
    source=HOURLY.name,
    source_interval=HOURLY.interval,
    interval=timedelta(days=30),
    start_offset=timedelta(days=3),
    end_offset=timedelta(hours=1),
    schedule=timedelta(hours=1),
)
ROLLUPS: tuple[Rollup, ...] = (HOURLY, FLEET_DAILY)
# Every window the rollups' DDL and guard read: the sources' and the rollups' own.
WINDOW_TABLES: tuple[str, ...] = (HEARTBEATS.name, HOURLY.name, FLEET_DAILY.name)


class GuardError(ValueError):
    """A window would let retention drop source rows a refresh still reads."""


def _seconds(value: timedelta) -> str:
    """As the service writes a window (`2d`, `1d2h30m`): the refusal reads the same whoever
    raises it."""
    total, out = int(value.total_seconds()), []
    for unit, size in (("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)):
        count, total = divmod(total, size)
        if count:
            out.append(f"{count}{unit}")
    return "".join(out) or "0s"


def check_windows(windows: dict[str, timedelta]) -> None:
    """Raise `GuardError` when a source's window is shorter than the reach of the rollup
    refreshed from it; the message names both numbers."""
    for rollup in ROLLUPS:
        window = windows.get(rollup.source)
        if window is not None and window < rollup.reach:
            raise GuardError(
                f"{rollup.source}: window {_seconds(window)} is shorter than the {rollup.name} "
                f"refresh reach {_seconds(rollup.reach)}: retention would drop rows before they "
                "are rolled up"
            )


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


# --- continuous aggregates -------------------------------------------------------------------


def _cagg_statements(windows: dict[str, timedelta]) -> list[str]:
    hourly = f"""
CREATE MATERIALIZED VIEW {HOURLY.name}
WITH (timescaledb.continuous, timescaledb.materialized_only = true) AS
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
    out = [hourly, daily]
    for r in ROLLUPS:
        out += [
            # The materialization hypertable's chunks: the rollup's own retention steps. (Its
            # indexes, (device_id, hour DESC) and (day DESC), are TimescaleDB's group indexes.)
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
    CONSTRAINT pk_{HOURLY.name} PRIMARY KEY (device_id, hour)
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
    (`time_series_v1.create_partition_functions`), which the revision creates on an Apache build.
    """
    check_windows(windows)
    if mechanism == "continuous_aggregate":
        statements = _cagg_statements(windows)
    else:
        statements = _table_statements(windows, lookahead)
    for sql in statements:
        execute(sql)
    for r in ROLLUPS:
        execute(
            "INSERT INTO retention_policies (table_name, drop_after, partition_interval) "
            f"VALUES ('{r.name}', {interval_literal(windows[r.name])}, {interval_literal(r.interval)}) "
            "ON CONFLICT (table_name) DO UPDATE SET drop_after = EXCLUDED.drop_after, "
            "partition_interval = EXCLUDED.partition_interval, updated_at = now()"
        )


def drop_rollups(execute: Execute, mechanism: RollupMechanism) -> None:
    """Undo `create_rollups` (dropping a continuous aggregate removes its policies with it)."""
    for r in reversed(ROLLUPS):
        if mechanism == "continuous_aggregate":
            execute(f"DROP MATERIALIZED VIEW IF EXISTS {r.name}")
        else:
            execute(f"DROP TABLE IF EXISTS {r.name}")
        execute(f"DELETE FROM retention_policies WHERE table_name = '{r.name}'")
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
