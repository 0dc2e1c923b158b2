"""The operator audit log: who did what, to what, from where; kept 400 days by default.

Revision ID: 862e82e33051
Revises: 875e6521299b
Create Date: 2025-12-03 15:20:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from revision_ddl.inputs import retention_window
from revision_ddl.time_series_v1 import interval_literal
from sqlalchemy.dialects import postgresql

from alembic import op

revision: str = "862e82e33051"
down_revision: str | Sequence[str] | None = "875e6521299b"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "operator_audit",
        sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("operator", sa.String(160), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("target", sa.String(300), nullable=False),
        sa.Column("request_id", sa.String(128), nullable=True),
        sa.Column("client_address", sa.String(64), nullable=True),
        sa.Column("details", postgresql.JSONB(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_operator_audit"),
    )
    op.create_index("ix_operator_audit_at", "operator_audit", ["at"])
    op.create_index("ix_operator_audit_operator_id", "operator_audit", ["operator", "id"])
    op.create_index("ix_operator_audit_target_id", "operator_audit", ["target", "id"])
    # A plain table's window row (NULL partition_interval), expired by the batched DELETE.
    op.execute(
        "INSERT INTO retention_policies (table_name, drop_after, partition_interval) "
        f"VALUES ('operator_audit', {interval_literal(retention_window(op, 'operator_audit'))}, NULL) "
        "ON CONFLICT (table_name) DO UPDATE SET drop_after = EXCLUDED.drop_after, updated_at = now()"
    )


def downgrade() -> None:
    op.execute("DELETE FROM retention_policies WHERE table_name = 'operator_audit'")
    op.drop_table("operator_audit")
