"""Bulk dispatches: one command to a selection of devices, its targets fixed at creation.

Revision ID: 3f6b1d8a2c47
Revises: 7d3b9e2c5a14
Create Date: 2025-12-04 00:00:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from revision_ddl.inputs import retention_window
from revision_ddl.time_series_v1 import interval_literal
from sqlalchemy.dialects import postgresql

from alembic import op

revision: str = "3f6b1d8a2c47"
down_revision: str | Sequence[str] | None = "7d3b9e2c5a14"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "bulk_dispatches",
        sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("payload", postgresql.JSONB(), nullable=True),
        sa.Column("selector", postgresql.JSONB(), nullable=False),
        sa.Column("target_count", sa.Integer(), nullable=False),
        sa.Column("created_by", sa.BigInteger(), nullable=True),
        sa.Column("created_at", TZ, server_default=sa.text("now()"), nullable=False),
        sa.Column("expanded_through", sa.String(128), nullable=True),
        sa.Column("expanded_at", TZ, nullable=True),
        sa.Column("cancelled_at", TZ, nullable=True),
        sa.ForeignKeyConstraint(
            ["created_by"], ["users.id"], name="fk_bulk_dispatches_created_by_users", ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_bulk_dispatches"),
        sa.UniqueConstraint("request_id", name="uq_bulk_dispatches_request_id"),
    )
    op.create_index("ix_bulk_dispatches_created_at", "bulk_dispatches", ["created_at"])
    op.create_index(
        "ix_bulk_dispatches_unexpanded",
        "bulk_dispatches",
        ["id"],
        postgresql_where=sa.text("expanded_at IS NULL AND cancelled_at IS NULL"),
    )
    op.create_table(
        "bulk_dispatch_targets",
        sa.Column("bulk_id", sa.BigInteger(), nullable=False),
        sa.Column("device_id", sa.String(128), nullable=False),
        sa.ForeignKeyConstraint(
            ["bulk_id"],
            ["bulk_dispatches.id"],
            name="fk_bulk_dispatch_targets_bulk_id_bulk_dispatches",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("bulk_id", "device_id", name="pk_bulk_dispatch_targets"),
    )
    # A plain table's window row (NULL partition_interval), expired by the batched DELETE.
    op.execute(
        "INSERT INTO retention_policies (table_name, drop_after, partition_interval) "
        f"VALUES ('bulk_dispatches', {interval_literal(retention_window(op, 'bulk_dispatches'))}, NULL) "
        "ON CONFLICT (table_name) DO UPDATE SET drop_after = EXCLUDED.drop_after, updated_at = now()"
    )


def downgrade() -> None:
    op.execute("DELETE FROM retention_policies WHERE table_name = 'bulk_dispatches'")
    op.drop_table("bulk_dispatch_targets")
    op.drop_table("bulk_dispatches")
