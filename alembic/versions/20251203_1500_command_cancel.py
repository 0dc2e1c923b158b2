"""Cancelled commands: the `cancelled` status and its `cancelled_at`.

Revision ID: 4931c9817a5f
Revises: 5c0a7e1f3b92
Create Date: 2025-12-03 15:00:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "4931c9817a5f"
down_revision: str | Sequence[str] | None = "5c0a7e1f3b92"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BEFORE = "status IN ('pending', 'delivered', 'executed', 'failed', 'expired')"
AFTER = "status IN ('pending', 'delivered', 'executed', 'failed', 'expired', 'cancelled')"


def upgrade() -> None:
    op.add_column("commands", sa.Column("cancelled_at", sa.DateTime(timezone=True), nullable=True))
    op.drop_constraint(op.f("ck_commands_status_known"), "commands", type_="check")
    op.create_check_constraint(op.f("ck_commands_status_known"), "commands", AFTER)


def downgrade() -> None:
    # The schema below knows no cancel: a cancelled command is the terminal status closest to it
    # there (it ended without the device's terminal ack), at the time it was cancelled.
    op.execute("UPDATE commands SET status = 'expired', expired_at = cancelled_at WHERE status = 'cancelled'")
    op.drop_constraint(op.f("ck_commands_status_known"), "commands", type_="check")
    op.create_check_constraint(op.f("ck_commands_status_known"), "commands", BEFORE)
    op.drop_column("commands", "cancelled_at")
