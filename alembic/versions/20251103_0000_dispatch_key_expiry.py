"""Dispatch idempotency keys expire: a batch function in both modes, a TimescaleDB job in timescale mode.

Revision ID: aadd574780ab
Revises: a43a2b52588a
Create Date: 2025-11-03 00:00:00+00:00
"""

from collections.abc import Sequence

from revision_ddl import time_series_v1 as ts
from revision_ddl.inputs import storage_mode

from alembic import op

revision: str = "aadd574780ab"
down_revision: str | Sequence[str] | None = "a43a2b52588a"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    ts.create_dispatch_key_expiry(op.execute, storage_mode(op))


def downgrade() -> None:
    ts.drop_dispatch_key_expiry(op.execute, storage_mode(op))
