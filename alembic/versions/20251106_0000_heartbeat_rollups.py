"""Heartbeat rollups: hourly per device and daily per fleet, as continuous aggregates or rollup tables.

Revision ID: e31c9e0a6175
Revises: 0c4e8a7d2f61
Create Date: 2025-11-06 00:00:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from revision_ddl import rollups_v1 as rollups
from revision_ddl import time_series_v1 as ts
from revision_ddl.inputs import is_offline, partition_lookahead, retention_window, storage_mode

from alembic import op

revision: str = "e31c9e0a6175"
down_revision: str | Sequence[str] | None = "0c4e8a7d2f61"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _mechanism() -> rollups.RollupMechanism:
    mode = storage_mode(op)
    if mode != "timescale" or is_offline(op):
        # Offline SQL cannot ask the server: it assumes TimescaleDB's default (TSL) license.
        return rollups.mechanism_for(mode, None)
    license_ = op.get_bind().execute(sa.text(rollups.LICENSE_SQL)).scalar()
    return rollups.mechanism_for(mode, license_)


def _built_mechanism() -> rollups.RollupMechanism:
    if is_offline(op):
        return rollups.mechanism_for(storage_mode(op), None)
    return op.get_bind().execute(sa.text(rollups.BUILT_MECHANISM_SQL)).scalar()


def upgrade() -> None:
    windows = {table: retention_window(op, table) for table in rollups.WINDOW_TABLES}
    if not is_offline(op):
        # The raw window in force (`retention set` may have changed it since it was migrated).
        stored = (
            op.get_bind()
            .execute(
                sa.text("SELECT drop_after FROM retention_policies WHERE table_name = :t"),
                {"t": ts.HEARTBEATS.name},
            )
            .scalar()
        )
        windows[ts.HEARTBEATS.name] = stored or windows[ts.HEARTBEATS.name]
    rollups.check_windows(windows)
    op.create_table(
        rollups.WATERMARKS,
        sa.Column("rollup", sa.String(63), nullable=False),
        sa.Column("materialized_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("refreshed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("rollup", name=f"pk_{rollups.WATERMARKS}"),
    )
    mechanism = _mechanism()
    if mechanism == "rollup_table" and storage_mode(op) == "timescale":
        ts.create_partition_functions(op.execute)  # an Apache build: no continuous aggregates
    rollups.create_rollups(op.execute, mechanism, windows, partition_lookahead(op))


def downgrade() -> None:
    mechanism = _built_mechanism()
    rollups.drop_rollups(op.execute, mechanism)
    if mechanism == "rollup_table" and storage_mode(op) == "timescale":
        ts.drop_partition_functions(op.execute)
    op.drop_table(rollups.WATERMARKS)
