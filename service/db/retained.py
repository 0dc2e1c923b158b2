"""The registry of retained tables: every table whose old rows are expired, in one tuple.

Each entry says how its rows expire (`RetentionKind`), which column dates a row, its default
window and the setting that seeds that window when the migrations create the table
(`service.settings.RETENTION_VARIABLES`). Everything that loops over retained tables loops over
`RETAINED_TABLES` (or `of_kind`): `telemetry retention show | set | run | check`, the maintenance
round, the windows in force, the migrations' `retention_policies` rows. Adding a retained table is
one entry here, one field and variable in `service.settings` (the only reader of the
environment, documented in README's configuration table) and the revision that creates it.

The window in force is the table's `retention_policies` row (what `telemetry retention set`
leaves); `default_window` only seeds that row and stands in for it when it is missing (only
possible by hand). At run time `service.retention.policies` is the one module that reads and
writes those rows; at migrate time `service.db.time_series.store_window_sql` is the one
statement that writes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum

from service.settings import RETENTION_VARIABLES, RetentionWindows


class RetentionKind(StrEnum):
    """How a retained table's old rows go."""

    # A hypertable (TimescaleDB retention policy) or range-partitioned table (partitions dropped
    # by the service): whole chunks/partitions go once their whole range is past the window.
    TIME_SERIES = "time_series"
    # A rollup of another retained table: a continuous aggregate with its own retention policy,
    # or a partitioned rollup table whose partitions the service drops (`service.db.rollups`).
    ROLLUP = "rollup"
    # A plain table (small, fleet-wide: Citus keeps it as a reference table): a batched
    # `DELETE … WHERE <time column> < now() - window`, run by the service in both modes.
    ROW_EXPIRY = "row_expiry"


@dataclass(frozen=True, slots=True)
class RetainedTable:
    name: str
    kind: RetentionKind
    time_column: str
    # The chunk (timescale) or partition (postgres) interval new ranges are made with; None for
    # a plain table. Retention drops whole ranges, so a row can outlive its window by this much.
    interval: timedelta | None = None

    @property
    def default_window(self) -> timedelta:
        """The window the migrations store when the table is created without its setting."""
        window: timedelta = getattr(RetentionWindows(), self.name)
        return window

    @property
    def setting(self) -> str:
        """The environment variable that seeds the window at migrate time."""
        return RETENTION_VARIABLES[self.name]

    @property
    def chunk_interval(self) -> timedelta:
        """`interval` of a partitioned table (raises for a plain one, which has no ranges)."""
        if self.interval is None:
            raise TypeError(f"{self.name} is a plain table: it has no chunk interval")
        return self.interval


HEARTBEATS = RetainedTable("device_heartbeats", RetentionKind.TIME_SERIES, "bucket_start", timedelta(hours=2))
DISPATCHES = RetainedTable("fcm_dispatches", RetentionKind.TIME_SERIES, "sent_at", timedelta(hours=6))
DOWNLOADS = RetainedTable("apk_download_events", RetentionKind.TIME_SERIES, "ts", timedelta(days=1))
# The event log (webhooks, /v1/events, the stream and the device history read it).
EVENTS = RetainedTable("events", RetentionKind.TIME_SERIES, "occurred_at", timedelta(days=1))
# The rollups' refresh (source, offsets, schedule) is in `service.db.rollups`.
HEARTBEATS_HOURLY = RetainedTable("device_heartbeats_hourly", RetentionKind.ROLLUP, "hour", timedelta(days=7))
FLEET_DAILY = RetainedTable("fleet_daily", RetentionKind.ROLLUP, "day", timedelta(days=30))
# Which tokens were used and which addresses were refused.
ENROLLMENT_EVENTS = RetainedTable("enrollment_events", RetentionKind.ROW_EXPIRY, "created_at")
# What operators asked devices to do, kept far longer than the 2-day dispatch rows.
COMMANDS = RetainedTable("commands", RetentionKind.ROW_EXPIRY, "created_at")
# Each command's FCM push (the outbox), read with its command.
COMMAND_PUSHES = RetainedTable("command_pushes", RetentionKind.ROW_EXPIRY, "created_at")
# Bulk dispatches (`service.commands.bulk`); their targets go with them (ON DELETE CASCADE).
BULK_DISPATCHES = RetainedTable("bulk_dispatches", RetentionKind.ROW_EXPIRY, "created_at")
# Who did what (`service.audit`), kept 400 days.
OPERATOR_AUDIT = RetainedTable("operator_audit", RetentionKind.ROW_EXPIRY, "at")

RETAINED_TABLES: tuple[RetainedTable, ...] = (
    HEARTBEATS,
    DISPATCHES,
    DOWNLOADS,
    EVENTS,
    HEARTBEATS_HOURLY,
    FLEET_DAILY,
    ENROLLMENT_EVENTS,
    COMMANDS,
    COMMAND_PUSHES,
    BULK_DISPATCHES,
    OPERATOR_AUDIT,
)
BY_NAME = {t.name: t for t in RETAINED_TABLES}


def of_kind(*kinds: RetentionKind) -> tuple[RetainedTable, ...]:
    """The registered tables of `kinds`, in registry order."""
    return tuple(t for t in RETAINED_TABLES if t.kind in kinds)
