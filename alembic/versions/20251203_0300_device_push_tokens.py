"""Devices' FCM registration tokens (a plain per-device table, the same in both storage modes).

Revision ID: 5c8e2a7f41d0
Revises: fe4482d9e874
Create Date: 2025-12-03 03:00:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "5c8e2a7f41d0"
down_revision: str | Sequence[str] | None = "fe4482d9e874"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TZ = sa.DateTime(timezone=True)
NOW = sa.text("now()")


def upgrade() -> None:
    op.create_table(
        "device_push_tokens",
        sa.Column("device_id", sa.String(128), nullable=False),
        sa.Column("token", sa.String(1024), nullable=False),
        sa.Column("changed_at", TZ, server_default=NOW, nullable=False),
        sa.Column("reported_at", TZ, server_default=NOW, nullable=False),
        sa.Column("invalid_at", TZ, nullable=True),
        sa.Column("invalid_reason", sa.String(64), nullable=True),
        sa.ForeignKeyConstraint(
            ["device_id"], ["devices.id"], name="fk_device_push_tokens_device_id_devices", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("device_id", name="pk_device_push_tokens"),
    )


def downgrade() -> None:
    op.drop_table("device_push_tokens")
