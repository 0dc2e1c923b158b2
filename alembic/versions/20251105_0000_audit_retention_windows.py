"""Audit tables get retention windows: `retention_policies` also holds unpartitioned tables.

Revision ID: 0c4e8a7d2f61
Revises: 5b1f0c2d9e47
Create Date: 2025-11-05 00:00:00+00:00
"""

from collections.abc import Sequence
from datetime import timedelta

import sqlalchemy as sa
from revision_ddl.inputs import retention_window
from revision_ddl.time_series_v1 import interval_literal

from alembic import op

revision: str = "0c4e8a7d2f61"
down_revision: str | Sequence[str] | None = "5b1f0c2d9e47"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _store_window_sql(table: str, window: timedelta) -> str:
    # The row of a plain table: NULL partition_interval (`service.retention.audit` reads it).
    return (
        "INSERT INTO retention_policies (table_name, drop_after, partition_interval) "
        f"VALUES ('{table}', {interval_literal(window)}, NULL) "
        "ON CONFLICT (table_name) DO UPDATE SET drop_after = EXCLUDED.drop_after, updated_at = now()"
    )


def upgrade() -> None:
    # NULL partition_interval: a plain table, expired row by row rather than by partition.
    op.alter_column("retention_policies", "partition_interval", existing_type=sa.Interval(), nullable=True)
    # Frozen: the audit tables of this revision (`device_events` became the event log in
    # 20251203, and its setting went with it: its window here is the default it had).
    enrollment = retention_window(op, "enrollment_events")
    for name, window in (("device_events", timedelta(days=90)), ("enrollment_events", enrollment)):
        op.execute(_store_window_sql(name, window))


def downgrade() -> None:
    op.execute("DELETE FROM retention_policies WHERE partition_interval IS NULL")
    op.alter_column("retention_policies", "partition_interval", existing_type=sa.Interval(), nullable=False)
