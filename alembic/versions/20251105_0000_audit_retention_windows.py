"""Audit tables get retention windows: `retention_policies` also holds unpartitioned tables.

Revision ID: 0c4e8a7d2f61
Revises: 5b1f0c2d9e47
Create Date: 2025-11-05 00:00:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op
from service.migrations.environment import run_settings
from service.retention import audit

revision: str = "0c4e8a7d2f61"
down_revision: str | Sequence[str] | None = "5b1f0c2d9e47"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # NULL partition_interval: a plain table, expired row by row rather than by partition.
    op.alter_column("retention_policies", "partition_interval", existing_type=sa.Interval(), nullable=True)
    windows = run_settings(op).retention.as_dict()
    for table in audit.AUDIT_TABLES:
        op.execute(audit.store_window_sql(table, windows[table.name]))


def downgrade() -> None:
    op.execute("DELETE FROM retention_policies WHERE partition_interval IS NULL")
    op.alter_column("retention_policies", "partition_interval", existing_type=sa.Interval(), nullable=False)
