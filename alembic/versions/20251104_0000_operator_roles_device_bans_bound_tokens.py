"""Operator roles, device bans, enrollment tokens bound to a device id, aggregated refusals.

Revision ID: 5b1f0c2d9e47
Revises: aadd574780ab
Create Date: 2025-11-04 00:00:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "5b1f0c2d9e47"
down_revision: str | Sequence[str] | None = "aadd574780ab"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Operators that exist already keep the power they had: admin.
    op.add_column("users", sa.Column("role", sa.String(16), server_default="admin", nullable=False))
    op.create_check_constraint("role_known", "users", "role IN ('admin', 'viewer')")
    # A revoked device stays out (banned) until an operator reinstates it.
    op.add_column("devices", sa.Column("banned_at", sa.DateTime(timezone=True), nullable=True))
    # Only this device id may enroll with the token (NULL: any new device id).
    op.add_column("enrollment_tokens", sa.Column("device_id", sa.String(128), nullable=True))
    # Refused enrollments are counted per address and window instead of one row per attempt.
    op.add_column(
        "enrollment_events", sa.Column("attempts", sa.Integer(), server_default="1", nullable=False)
    )
    op.add_column("enrollment_events", sa.Column("window_start", sa.DateTime(timezone=True), nullable=True))
    op.create_unique_constraint(None, "enrollment_events", ["outcome", "remote_addr", "window_start"])
    # Audit tables are expired by created_at (batched DELETE), so it needs an index of its own.
    op.create_index(None, "enrollment_events", ["created_at"])
    op.create_index(None, "device_events", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_device_events_created_at", table_name="device_events")
    op.drop_index("ix_enrollment_events_created_at", table_name="enrollment_events")
    op.drop_constraint(
        "uq_enrollment_events_outcome_remote_addr_window_start", "enrollment_events", type_="unique"
    )
    op.drop_column("enrollment_events", "window_start")
    op.drop_column("enrollment_events", "attempts")
    op.drop_column("enrollment_tokens", "device_id")
    op.drop_column("devices", "banned_at")
    op.drop_constraint("role_known", "users", type_="check")
    op.drop_column("users", "role")
