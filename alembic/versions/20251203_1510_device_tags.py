"""Device tags: an operator's labels per device, keyed by device_id (the same in both modes).

Revision ID: 875e6521299b
Revises: 4931c9817a5f
Create Date: 2025-12-03 15:10:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "875e6521299b"
down_revision: str | Sequence[str] | None = "4931c9817a5f"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "device_tags",
        sa.Column("device_id", sa.String(128), nullable=False),
        sa.Column("tag", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(
            ["device_id"], ["devices.id"], name="fk_device_tags_device_id_devices", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("device_id", "tag", name="pk_device_tags"),
    )
    op.create_index("ix_device_tags_tag_device_id", "device_tags", ["tag", "device_id"])


def downgrade() -> None:
    op.drop_table("device_tags")
