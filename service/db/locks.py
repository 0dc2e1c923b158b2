"""Every PostgreSQL advisory lock the service takes, each named once.

The values are a protocol between every running instance, every migration run and the SQL
functions stored in existing databases (`db/time_series.py`): changing one silently lets two
instances do the same work at once. Never change a value; add a new lock instead.
"""

from __future__ import annotations

# `pg_advisory_xact_lock`: one migration run at a time per database (alembic's env).
MIGRATION = 0x7E1E_3E7

# `pg_try_advisory_lock`: one maintenance round at a time; other instances skip their round.
MAINTENANCE = 0x7E1E_3E8

# `pg_advisory_xact_lock(hashtext(...))`, per table: creating or dropping its partitions (taken
# inside the PL/pgSQL partition functions, and by callers that must not interleave with them).
_PARTITIONS_PREFIX = "telemetry_partitions:"

# `pg_advisory_xact_lock(hashtext(...))`, per table: changing its retention window.
_RETENTION_POLICY_PREFIX = "telemetry_retention_policy:"

# `pg_advisory_xact_lock(hashtext(...))`, per rollup table: one refresh of it at a time.
_ROLLUP_PREFIX = "telemetry_rollup:"


def partitions(table: str) -> str:
    """The lock text serializing partition creation and drops of `table`."""
    return _PARTITIONS_PREFIX + table


def partitions_sql(parent: str) -> str:
    """`partitions(...)`'s key as a SQL expression over the SQL text expression `parent`, for
    the PL/pgSQL functions that take it themselves."""
    return f"hashtext('{_PARTITIONS_PREFIX}' || {parent})"


def retention_policy(table: str) -> str:
    """The lock text serializing window changes of `table`."""
    return _RETENTION_POLICY_PREFIX + table


def rollup(name: str) -> str:
    """The lock text serializing refreshes of the rollup table `name`."""
    return _ROLLUP_PREFIX + name
