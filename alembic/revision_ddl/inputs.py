"""What a migration run hands its revisions: the storage mode and a few settings.

`service.migrations.environment` (through `alembic/env.py`) puts the run's storage mode and its
`Settings` into the migration context's options; the functions below read them back. They are
the whole contract between the live settings and the revisions: each names the attribute it
reads, so a renamed setting fails a migration loudly (AttributeError) instead of silently
changing what an old revision does. Frozen like the rest of `revision_ddl`: an input a new
revision needs is a new function, an existing one is never changed.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Literal

StorageMode = Literal["timescale", "postgres"]


def _opts(op: Any) -> dict[str, Any]:
    return op.get_context().opts


def storage_mode(op: Any) -> StorageMode:
    """The storage mode of this run, decided once by the environment (detected or forced)."""
    return _opts(op)["storage_mode"]


def retention_window(op: Any, table: str) -> timedelta:
    """The configured retention window of `table` (`TELEMETRY_RETENTION_<TABLE>_SECONDS`)."""
    return getattr(_opts(op)["settings"].retention, table)


def partition_lookahead(op: Any) -> timedelta:
    """How far ahead of now partitions are made (`TELEMETRY_PARTITION_LOOKAHEAD_SECONDS`)."""
    return _opts(op)["settings"].partition_lookahead


def compress_after(op: Any) -> timedelta:
    """When heartbeat chunks are compressed (`TELEMETRY_COMPRESS_AFTER_SECONDS`; 0: off)."""
    return _opts(op)["settings"].compress_after


def presence_default_interval(op: Any) -> timedelta:
    """A device's expected heartbeat interval before it was learned."""
    return _opts(op)["settings"].presence.default_interval


def presence_missed_beats(op: Any) -> int:
    """How many expected intervals a device may miss before it counts as offline."""
    return _opts(op)["settings"].presence.missed_beats


def presence_min_offline(op: Any) -> timedelta:
    """The shortest time after which a device may count as offline."""
    return _opts(op)["settings"].presence.min_offline


def is_offline(op: Any) -> bool:
    """Offline (`--sql`) generation: no server to ask, the SQL is printed."""
    return bool(op.get_context().as_sql)
