"""The time-series tables and the DDL that makes them time-partitioned, in both storage modes.

This is the one module that knows TimescaleDB's and native partitioning's DDL; revisions call it
instead of carrying their own copies. Everything here is emitted as SQL text through
`op.execute`, so it works online and in offline (`--sql`) mode alike: anything that depends on
the current time (which partitions cover "now") is computed by the server, in the PL/pgSQL
functions created by `create_partition_functions`, never by Python at generation time.

Chunk/partition intervals. Retention drops whole chunks (or partitions), so a row can outlive
its window by up to one interval; a smaller interval means tighter retention but more
chunks to plan over. The intervals below keep that overshoot at or under ~1/8 of the window
while keeping each chunk's indexes small enough to stay in memory at the fleet rates
the benchmarks simulate (10,000 devices every 10 s is ~7 M heartbeat rows per 2-hour chunk).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from service.db import locks
from service.db.retained import (
    DISPATCHES,
    DOWNLOADS,
    EVENTS,
    HEARTBEATS,
    RetainedTable,
    RetentionKind,
    of_kind,
)
from service.settings import StorageMode

__all__ = ["DISPATCHES", "DOWNLOADS", "EVENTS", "HEARTBEATS", "TIME_SERIES_TABLES"]

PARTITION_SCHEMA = "telemetry_partitions"

# The registry's time-series tables (`service.db.retained`): hypertables or range partitions.
TIME_SERIES_TABLES: tuple[RetainedTable, ...] = of_kind(RetentionKind.TIME_SERIES)
BY_NAME = {t.name: t for t in TIME_SERIES_TABLES}  # the time-series ones only

Execute = Callable[[str], object]


def store_window_sql(table: RetainedTable, window: timedelta) -> str:
    """The one statement the migrations write `retention_policies` with (works offline): the
    table's row, created or reset to `window` and the table's interval (NULL: a plain table)."""
    interval = "NULL" if table.interval is None else interval_literal(table.interval)
    return (
        "INSERT INTO retention_policies (table_name, drop_after, partition_interval) "
        f"VALUES ('{table.name}', {interval_literal(window)}, {interval}) "
        "ON CONFLICT (table_name) DO UPDATE SET drop_after = EXCLUDED.drop_after, "
        "partition_interval = EXCLUDED.partition_interval, updated_at = now()"
    )


def forget_window_sql(table: RetainedTable) -> str:
    """For migrations: remove the table's `retention_policies` row (the table is dropped)."""
    return f"DELETE FROM retention_policies WHERE table_name = '{table.name}'"


def interval_literal(value: timedelta) -> str:
    """A PostgreSQL interval literal, exact to the microsecond."""
    micros = (value.days * 86_400 + value.seconds) * 1_000_000 + value.microseconds
    if micros % 1_000_000 == 0:
        return f"INTERVAL '{micros // 1_000_000} seconds'"
    return f"INTERVAL '{micros / 1_000_000:.6f} seconds'"


# --- plain PostgreSQL: range partitions -------------------------------------------------------

_ENSURE_PARTITIONS = f"""
CREATE OR REPLACE FUNCTION telemetry_ensure_partitions(
    parent text, step interval, from_ts timestamptz, to_ts timestamptz
) RETURNS integer LANGUAGE plpgsql AS $fn$
DECLARE
    lo timestamptz := date_bin(step, from_ts, timestamptz '2000-01-01 00:00:00+00');
    part text;
    created integer := 0;
BEGIN
    -- One creator per table at a time: concurrent CREATE TABLE IF NOT EXISTS can still collide.
    PERFORM pg_advisory_xact_lock({locks.partitions_sql("parent")});
    WHILE lo <= to_ts LOOP
        part := format('%s_p%s', parent, to_char(lo AT TIME ZONE 'UTC', 'YYYYMMDD"t"HH24MI'));
        IF to_regclass(format('{PARTITION_SCHEMA}.%I', part)) IS NULL THEN
            BEGIN
                EXECUTE format(
                    'CREATE TABLE {PARTITION_SCHEMA}.%I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)',
                    part, parent, lo, lo + step);
                created := created + 1;
            EXCEPTION WHEN invalid_object_definition THEN
                -- Overlaps a partition made with an older interval: that range is covered.
                NULL;
            END;
        END IF;
        lo := lo + step;
    END LOOP;
    RETURN created;
END
$fn$
"""

_PARTITION_BOUNDS = f"""
CREATE OR REPLACE FUNCTION telemetry_partition_bounds(parent text)
RETURNS TABLE(partition_name text, range_start timestamptz, range_end timestamptz)
LANGUAGE sql STABLE AS $fn$
    SELECT c.relname::text,
           (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'FROM \\(''([^'']+)''\\)'))[1]::timestamptz,
           (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'TO \\(''([^'']+)''\\)'))[1]::timestamptz
    FROM pg_inherits i
    JOIN pg_class c ON c.oid = i.inhrelid
    JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE i.inhparent = parent::regclass AND n.nspname = '{PARTITION_SCHEMA}'
    ORDER BY 2
$fn$
"""

_DROP_EXPIRED = f"""
CREATE OR REPLACE FUNCTION telemetry_drop_expired_partitions(parent text, older_than timestamptz)
RETURNS TABLE(partition_name text, range_start timestamptz, range_end timestamptz)
LANGUAGE plpgsql AS $fn$
DECLARE
    r record;
BEGIN
    PERFORM pg_advisory_xact_lock({locks.partitions_sql("parent")});
    FOR r IN SELECT * FROM telemetry_partition_bounds(parent) b WHERE b.range_end <= older_than
    LOOP
        EXECUTE format('DROP TABLE {PARTITION_SCHEMA}.%I', r.partition_name);
        partition_name := r.partition_name;
        range_start := r.range_start;
        range_end := r.range_end;
        RETURN NEXT;
    END LOOP;
END
$fn$
"""


def create_partition_functions(execute: Execute) -> None:
    execute(f"CREATE SCHEMA IF NOT EXISTS {PARTITION_SCHEMA}")
    execute(_ENSURE_PARTITIONS)
    execute(_PARTITION_BOUNDS)
    execute(_DROP_EXPIRED)


def drop_partition_functions(execute: Execute) -> None:
    execute("DROP FUNCTION IF EXISTS telemetry_drop_expired_partitions(text, timestamptz)")
    execute("DROP FUNCTION IF EXISTS telemetry_partition_bounds(text)")
    execute("DROP FUNCTION IF EXISTS telemetry_ensure_partitions(text, interval, timestamptz, timestamptz)")
    execute(f"DROP SCHEMA IF EXISTS {PARTITION_SCHEMA} CASCADE")


def coverage(window: str, ahead: str, *, slack: str | None = None) -> str:
    """The one definition of the time range partitions must cover, as the `from_ts, to_ts`
    arguments of `telemetry_ensure_partitions` (each argument a SQL interval expression: a
    literal, a bind parameter or a `retention_policies` column).

    The range runs from the oldest time a write may carry, `now - window`, to `now + ahead`.
    With `slack` (one partition interval) it starts one interval earlier, which creates at most
    one partition whose rows are all expired already (the next maintenance round drops it):
    * without slack: what retention keeps, at `retention set` and at every maintenance round
      (there, slack would re-create each round the partition that the round's drop step
      removes);
    * with slack: partitions made in one go, by the migrations (tables and rollups) and by the
      writer after an insert found no partition; a row accepted just before `now - window`
      moved past it still finds one.
    """
    lower = f"now() - {window}" if slack is None else f"now() - {window} - {slack}"
    return f"{lower}, now() + {ahead}"


def ensure_partitions_sql(
    table: RetainedTable, window: timedelta, lookahead: timedelta, interval: timedelta | None = None
) -> str:
    """SQL creating the partitions that cover [now - window - interval, now + lookahead]."""
    step = interval_literal(interval or table.chunk_interval)
    bounds = coverage(interval_literal(window), interval_literal(lookahead), slack=step)
    return f"SELECT telemetry_ensure_partitions('{table.name}', {step}, {bounds})"


# --- TimescaleDB: hypertables and retention policies ------------------------------------------


def create_extension(execute: Execute) -> None:
    execute("CREATE EXTENSION IF NOT EXISTS timescaledb")


def make_hypertable(execute: Execute, table: RetainedTable, window: timedelta) -> None:
    """Turn an empty table into a hypertable with exactly one retention policy at `window`."""
    # create_default_indexes => false: our indexes are declared in the models; Timescale's
    # default time index would be redundant and show up as drift.
    execute(
        f"SELECT create_hypertable('{table.name}', by_range('{table.time_column}', "
        f"{interval_literal(table.chunk_interval)}), create_default_indexes => false)"
    )
    execute(f"SELECT add_retention_policy('{table.name}', drop_after => {interval_literal(window)})")


def remove_retention_policy(execute: Execute, table: RetainedTable) -> None:
    execute(f"SELECT remove_retention_policy('{table.name}', if_exists => true)")


def postgres_partition_by(table: RetainedTable) -> str:
    return f"RANGE ({table.time_column})"


def after_create(
    execute: Execute,
    mode: StorageMode,
    table: RetainedTable,
    window: timedelta,
    lookahead: timedelta,
) -> None:
    """Make a freshly created (empty) time-series table time-partitioned in `mode`."""
    if mode == "timescale":
        make_hypertable(execute, table, window)
    else:
        execute(ensure_partitions_sql(table, window, lookahead))
    execute(store_window_sql(table, window))


def before_drop(execute: Execute, mode: StorageMode, table: RetainedTable) -> None:
    if mode == "timescale":
        remove_retention_policy(execute, table)
    execute(forget_window_sql(table))


# --- dispatch idempotency keys: expiry --------------------------------------------------------
#
# `fcm_dispatch_keys` is a plain table (it must be: its primary key `request_id` cannot live on a
# partitioned table), so retention never drops it and it would grow forever. A key is expired
# once its `sent_at` is older than the dispatch window plus one dispatch chunk interval: by then
# the chunk/partition holding its dispatch row is past the window as a whole, so the row is gone
# or due to go (deleting the key cascades to a row not dropped yet). The window and interval are
# read from `retention_policies` at run time, so `telemetry retention set fcm_dispatches ...`
# moves the key expiry with it. After expiry a retried request_id counts as new: idempotency is
# guaranteed for at least the dispatch window.

DISPATCH_KEY_CUTOFF_FUNCTION = "telemetry_dispatch_key_cutoff"
DISPATCH_KEY_EXPIRE_FUNCTION = "telemetry_expire_dispatch_keys"
DISPATCH_KEY_EXPIRY_PROCEDURE = "telemetry_dispatch_key_expiry_job"
DISPATCH_KEY_EXPIRY_SCHEDULE = timedelta(hours=1)
DISPATCH_KEY_EXPIRY_BATCH = 10_000

# NULL (expire nothing) when the dispatch table has no retention row.
_DISPATCH_KEY_CUTOFF = f"""
CREATE OR REPLACE FUNCTION {DISPATCH_KEY_CUTOFF_FUNCTION}()
RETURNS timestamptz LANGUAGE sql STABLE AS $fn$
    SELECT now() - drop_after - partition_interval
    FROM retention_policies WHERE table_name = '{DISPATCHES.name}'
$fn$
"""

# One bounded step: deletes at most `batch_size` expired keys and returns how many it deleted.
# No ORDER BY: without an index on sent_at it would sort the whole table, while a plain LIMIT
# stops scanning at the first `batch_size` matches (old keys sit early in the heap).
# SKIP LOCKED: a key a writer holds right now is not expired under it.
_DISPATCH_KEY_EXPIRE = f"""
CREATE OR REPLACE FUNCTION {DISPATCH_KEY_EXPIRE_FUNCTION}(batch_size integer)
RETURNS bigint LANGUAGE plpgsql AS $fn$
DECLARE
    cutoff timestamptz := {DISPATCH_KEY_CUTOFF_FUNCTION}();
    deleted bigint;
BEGIN
    IF cutoff IS NULL THEN
        RETURN 0;
    END IF;
    WITH doomed AS (
        SELECT request_id FROM fcm_dispatch_keys WHERE sent_at < cutoff
        LIMIT batch_size FOR UPDATE SKIP LOCKED
    )
    DELETE FROM fcm_dispatch_keys k USING doomed d WHERE k.request_id = d.request_id;
    GET DIAGNOSTICS deleted = ROW_COUNT;
    RETURN deleted;
END
$fn$
"""

# The TimescaleDB job (`add_job` wants a (job_id, config) procedure). It commits after every
# batch so that no transaction holds row locks for long, and stops at the first short batch.
_DISPATCH_KEY_EXPIRY_JOB = f"""
CREATE OR REPLACE PROCEDURE {DISPATCH_KEY_EXPIRY_PROCEDURE}(job_id integer, config jsonb)
LANGUAGE plpgsql AS $fn$
DECLARE
    batch integer := coalesce((config->>'batch_size')::integer, {DISPATCH_KEY_EXPIRY_BATCH});
BEGIN
    LOOP
        EXIT WHEN {DISPATCH_KEY_EXPIRE_FUNCTION}(batch) < batch;
        COMMIT;
    END LOOP;
END
$fn$
"""


def create_dispatch_key_expiry(execute: Execute, mode: StorageMode) -> None:
    """Create the key-expiry functions (both modes); in timescale mode also schedule exactly one
    job running them every `DISPATCH_KEY_EXPIRY_SCHEDULE`. In postgres mode the service's
    partition maintenance and `telemetry retention run` call the batch function instead."""
    execute(_DISPATCH_KEY_CUTOFF)
    execute(_DISPATCH_KEY_EXPIRE)
    execute(_DISPATCH_KEY_EXPIRY_JOB)
    if mode == "timescale":
        execute(
            f"SELECT add_job('{DISPATCH_KEY_EXPIRY_PROCEDURE}', "
            f"{interval_literal(DISPATCH_KEY_EXPIRY_SCHEDULE)}, "
            f"config => '{{\"batch_size\": {DISPATCH_KEY_EXPIRY_BATCH}}}'::jsonb) "
            "WHERE NOT EXISTS (SELECT 1 FROM timescaledb_information.jobs "
            f"WHERE proc_name = '{DISPATCH_KEY_EXPIRY_PROCEDURE}')"
        )


def drop_dispatch_key_expiry(execute: Execute, mode: StorageMode) -> None:
    """Undo `create_dispatch_key_expiry`: unschedule every job running the procedure (so none
    is left pointing at a dropped procedure), then drop the procedure and functions."""
    if mode == "timescale":
        execute(
            "SELECT delete_job(job_id) FROM timescaledb_information.jobs "
            f"WHERE proc_name = '{DISPATCH_KEY_EXPIRY_PROCEDURE}'"
        )
    execute(f"DROP PROCEDURE IF EXISTS {DISPATCH_KEY_EXPIRY_PROCEDURE}(integer, jsonb)")
    execute(f"DROP FUNCTION IF EXISTS {DISPATCH_KEY_EXPIRE_FUNCTION}(integer)")
    execute(f"DROP FUNCTION IF EXISTS {DISPATCH_KEY_CUTOFF_FUNCTION}()")
