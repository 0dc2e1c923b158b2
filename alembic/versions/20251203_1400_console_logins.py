"""Console logins: operator passwords (argon2id) and console sessions beside API tokens.

Revision ID: 5c0a7e1f3b92
Revises: 5c8e2a7f41d0
Create Date: 2025-12-03 14:00:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "5c0a7e1f3b92"
down_revision: str | Sequence[str] | None = "5c8e2a7f41d0"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("users", sa.Column("password_hash", sa.String(256), nullable=True))
    # Every existing row is an API token: the default keeps them so.
    op.add_column("sessions", sa.Column("kind", sa.String(16), server_default="api", nullable=False))
    # op.f: the name as given, the models' convention already applied (not prefixed twice).
    op.create_check_constraint(op.f("ck_sessions_kind_known"), "sessions", "kind IN ('api', 'console')")


def downgrade() -> None:
    # Console sessions mean nothing to the schema below: they go, API tokens stay.
    op.execute("DELETE FROM sessions WHERE kind = 'console'")
    op.drop_constraint(op.f("ck_sessions_kind_known"), "sessions", type_="check")
    op.drop_column("sessions", "kind")
    op.drop_column("users", "password_hash")
