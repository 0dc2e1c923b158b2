"""The event log: `events`, a time-series table that `device_events` becomes.

Revision ID: 2d6e35f2a5f9
Revises: b7c1e4d9f2a6
Create Date: 2025-12-03 00:00:00+00:00

One log, not two: the device history and the outbound feed read the same rows
(`service.events`). `events` is partitioned by `occurred_at` (a hypertable, or range
partitions) with the event log's window (`TELEMETRY_RETENTION_EVENTS_SECONDS`, 7 days); its
primary key `(device_id, id, occurred_at)` holds the partitioning column and leads with the
device (Citus). `txid` is the writing transaction's id, which the feed pages by.

The rows of `device_events` inside the new window move over with their ids and new type names
(`enrolled` → `device.enrolled`, `credential_revoked` → `device.revoked`, ...); older ones are
past the log's window and go with the table. Downgrade rebuilds `device_events` as it was (90
days) from the log's `device.*` rows.
"""

from collections.abc import Sequence
from datetime import timedelta

import sqlalchemy as sa
from revision_ddl import time_series_v1 as ts
from revision_ddl.inputs import partition_lookahead, retention_window, storage_mode
from sqlalchemy.dialects import postgresql

from alembic import op

revision: str = "2d6e35f2a5f9"
down_revision: str | Sequence[str] | None = "b7c1e4d9f2a6"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TZ = sa.DateTime(timezone=True)
# Frozen here: the old names and the new (`service.events.catalogue.DEVICE_HISTORY_NAMES`).
_RENAMES = (
    ("enrolled", "device.enrolled"),
    ("re_enrolled", "device.re_enrolled"),
    ("credential_revoked", "device.revoked"),
    ("reinstated", "device.reinstated"),
    ("went_offline", "device.went_offline"),
    ("came_online", "device.came_online"),
    ("app_version_changed", "device.app_version_changed"),
)
_DEVICE_EVENTS_WINDOW = timedelta(days=90)


def _case(column: str, pairs: Sequence[tuple[str, str]]) -> str:
    whens = " ".join(f"WHEN '{old}' THEN '{new}'" for old, new in pairs)
    return f"CASE {column} {whens} END"


def upgrade() -> None:
    mode = storage_mode(op)
    window = retention_window(op, "events")
    lookahead = partition_lookahead(op)
    op.execute("CREATE SEQUENCE events_id_seq AS bigint")
    kwargs = {"postgresql_partition_by": ts.postgres_partition_by(ts.EVENTS)} if mode == "postgres" else {}
    op.create_table(
        "events",
        sa.Column("device_id", sa.String(128), server_default="", nullable=False),
        sa.Column("id", sa.BigInteger(), server_default=sa.text("nextval('events_id_seq')"), nullable=False),
        sa.Column("occurred_at", TZ, server_default=sa.text("now()"), nullable=False),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("version", sa.SmallInteger(), server_default="1", nullable=False),
        sa.Column("payload", postgresql.JSONB(), server_default=sa.text("'{}'::jsonb"), nullable=False),
        sa.Column(
            "txid",
            sa.BigInteger(),
            server_default=sa.text("(pg_current_xact_id()::text)::bigint"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("device_id", "id", "occurred_at", name="pk_events"),
        **kwargs,
    )
    op.create_index("ix_events_txid_id", "events", ["txid", "id"])
    op.create_index("ix_events_device_id_occurred_at_id", "events", ["device_id", "occurred_at", "id"])
    ts.after_create(op.execute, mode, ts.EVENTS, window, lookahead)

    op.execute(
        f"""
        INSERT INTO events (device_id, id, occurred_at, type, payload)
        SELECT device_id, id, created_at, {_case("event_type", _RENAMES)}, coalesce(details, '{{}}'::jsonb)
        FROM device_events
        WHERE created_at >= now() - {ts.interval_literal(window)}
          AND created_at < now() + {ts.interval_literal(lookahead)}
          AND event_type IN ({", ".join(f"'{old}'" for old, _ in _RENAMES)})
        ORDER BY created_at, id
        """
    )
    # Ids carry on where device_events left off (a `before` cursor stays meaningful).
    op.execute("SELECT setval('events_id_seq', coalesce((SELECT max(id) FROM device_events), 0) + 1, false)")
    op.drop_table("device_events")
    op.execute("DELETE FROM retention_policies WHERE table_name = 'device_events'")


def downgrade() -> None:
    mode = storage_mode(op)
    op.create_table(
        "device_events",
        sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column("device_id", sa.String(128), nullable=False),
        sa.Column("event_type", sa.String(64), nullable=False),
        sa.Column("details", postgresql.JSONB(), nullable=True),
        sa.Column("created_at", TZ, server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_device_events"),
    )
    op.create_index("ix_device_events_device_id_created_at", "device_events", ["device_id", "created_at"])
    op.create_index("ix_device_events_created_at", "device_events", ["created_at"])
    back = [(new, old) for old, new in _RENAMES]
    op.execute(
        f"""
        INSERT INTO device_events (id, device_id, event_type, details, created_at)
        OVERRIDING SYSTEM VALUE
        SELECT id, device_id, {_case("type", back)}, payload, occurred_at FROM events
        WHERE type IN ({", ".join(f"'{new}'" for new, _ in back)})
        ORDER BY occurred_at, id
        """
    )
    op.execute(
        "SELECT setval(pg_get_serial_sequence('device_events', 'id'), "
        "coalesce((SELECT max(id) FROM device_events), 0) + 1, false)"
    )
    op.execute(
        "INSERT INTO retention_policies (table_name, drop_after, partition_interval) "
        f"VALUES ('device_events', {ts.interval_literal(_DEVICE_EVENTS_WINDOW)}, NULL) "
        "ON CONFLICT (table_name) DO UPDATE SET drop_after = EXCLUDED.drop_after, updated_at = now()"
    )
    ts.before_drop(op.execute, mode, ts.EVENTS)
    op.drop_table("events")
    op.execute("DROP SEQUENCE events_id_seq")
