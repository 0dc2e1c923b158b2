"""Command pushes: the FCM outbox, one row per new command, with its own retention window.

Revision ID: 7d3b9e2c5a14
Revises: 862e82e33051
Create Date: 2025-12-03 18:00:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from revision_ddl.inputs import retention_window
from revision_ddl.time_series_v1 import interval_literal

from alembic import op

revision: str = "7d3b9e2c5a14"
down_revision: str | Sequence[str] | None = "862e82e33051"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TZ = sa.DateTime(timezone=True)
NOW = sa.text("now()")


def upgrade() -> None:
    op.create_table(
        "command_pushes",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("device_id", sa.String(128), nullable=False),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), server_default="queued", nullable=False),
        sa.Column("created_at", TZ, server_default=NOW, nullable=False),
        sa.Column("expires_at", TZ, nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("next_attempt_at", TZ, server_default=NOW, nullable=False),
        sa.Column("message_name", sa.String(256), nullable=True),
        sa.Column("last_status_code", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.String(256), nullable=True),
        sa.Column("pushed_at", TZ, nullable=True),
        sa.CheckConstraint(
            "status IN ('queued', 'sent', 'failed', 'no_token')", name=op.f("ck_command_pushes_status_known")
        ),
        sa.PrimaryKeyConstraint("id", "device_id", name="pk_command_pushes"),
    )
    op.create_index(
        "ix_command_pushes_next_attempt_at",
        "command_pushes",
        ["next_attempt_at"],
        postgresql_where=sa.text("status = 'queued'"),
    )
    op.create_index("ix_command_pushes_created_at", "command_pushes", ["created_at"])
    # A plain table's window row (NULL partition_interval), expired by a batched DELETE.
    op.execute(
        "INSERT INTO retention_policies (table_name, drop_after, partition_interval) "
        f"VALUES ('command_pushes', {interval_literal(retention_window(op, 'command_pushes'))}, NULL) "
        "ON CONFLICT (table_name) DO UPDATE SET drop_after = EXCLUDED.drop_after, updated_at = now()"
    )


def downgrade() -> None:
    op.execute("DELETE FROM retention_policies WHERE table_name = 'command_pushes'")
    op.drop_table("command_pushes")
