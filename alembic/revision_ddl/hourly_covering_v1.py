"""The hourly rollup's covering index, as revision b7c1e4d9f2a6 (20251124) built it.

A frozen copy (see `revision_ddl`) of the covering-index part of `service/db/rollups.py` as
that revision used it. The device-history read is served by an index-only scan: the hourly
rollup's one `(device_id, hour)` index INCLUDEs every column the read selects. In the table
mechanism that index is the primary key itself (rebuilt with the INCLUDE list); on a
continuous aggregate it is `HOURLY_COVERING_INDEX` on the materialization hypertable, replacing
TimescaleDB's group index `(device_id, hour DESC)`, whose key it leads with.
"""

from __future__ import annotations

from revision_ddl.rollups_v1 import HOURLY, STATUSES, RollupMechanism
from revision_ddl.time_series_v1 import Execute

# Every column the device-history read selected from the hourly rollup besides its key, when
# this revision was written.
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
    that has it already; the table's primary key is rebuilt either way). While the index is
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
