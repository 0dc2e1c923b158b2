"""Device presence: one row per device, kept by the writer; its offline deadline indexed.

Revision ID: d5a91f3c7b20
Revises: f2c7a9d41e58
Create Date: 2025-11-08 00:00:00+00:00

The same plain table in both storage modes (per device, not time series). Devices enrolled
before this revision get their row here, seen at their newest stored heartbeat's receipt (if
any), with the configured default interval: their deadline is then exact from the first
heartbeat after the upgrade on.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from revision_ddl.inputs import presence_default_interval, presence_min_offline, presence_missed_beats

from alembic import op

revision: str = "d5a91f3c7b20"
down_revision: str | Sequence[str] | None = "f2c7a9d41e58"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "device_presence",
        sa.Column("device_id", sa.String(128), nullable=False),
        sa.Column("last_seen_at", _TS, nullable=True),
        sa.Column("last_ts", _TS, nullable=True),
        sa.Column("last_status", sa.String(64), nullable=True),
        sa.Column("last_battery_pct", sa.SmallInteger(), nullable=True),
        sa.Column("last_app_version", sa.String(64), nullable=True),
        sa.Column("last_network", sa.String(32), nullable=True),
        sa.Column("learned_interval_seconds", sa.Double(), nullable=True),
        sa.Column("gaps_seen", sa.Integer(), server_default="0", nullable=False),
        sa.Column("expected_interval_seconds", sa.Double(), nullable=True),
        sa.Column("offline_after", _TS, nullable=True),
        sa.Column("offline_since", _TS, nullable=True),
        sa.ForeignKeyConstraint(
            ["device_id"], ["devices.id"], name="fk_device_presence_device_id_devices", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("device_id", name="pk_device_presence"),
        postgresql_with={"fillfactor": 80},
    )
    op.create_index(
        "ix_device_presence_offline_after",
        "device_presence",
        ["offline_after", "device_id"],
        postgresql_where=sa.text("offline_since IS NULL"),
    )
    op.create_index(
        "ix_device_presence_offline_since",
        "device_presence",
        ["offline_since", "device_id"],
        postgresql_where=sa.text("offline_since IS NOT NULL"),
    )
    interval = presence_default_interval(op).total_seconds()
    window = max(presence_missed_beats(op) * interval, presence_min_offline(op).total_seconds())
    op.execute(
        f"""
        INSERT INTO device_presence (device_id, last_seen_at, last_ts, last_status, last_battery_pct,
            last_app_version, last_network, expected_interval_seconds, offline_after)
        SELECT d.id, h.received_at, h.ts, h.status, h.battery_pct, h.app_version, h.network,
               {interval},
               h.received_at + make_interval(secs => {window})
        FROM devices d
        LEFT JOIN LATERAL (
            SELECT received_at, ts, status, battery_pct, app_version, network FROM device_heartbeats
            WHERE device_id = d.id ORDER BY ts DESC LIMIT 1
        ) h ON true
        """
    )


def downgrade() -> None:
    op.drop_index("ix_device_presence_offline_since", table_name="device_presence")
    op.drop_index("ix_device_presence_offline_after", table_name="device_presence")
    op.drop_table("device_presence")
