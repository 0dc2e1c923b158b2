"""Dispatch idempotency keys expire: a batch function in both modes, a TimescaleDB job in timescale mode.

Revision ID: aadd574780ab
Revises: a43a2b52588a
Create Date: 2025-11-03 00:00:00+00:00
"""

from collections.abc import Sequence

from alembic import op
from service.db import time_series as ts
from service.migrations.environment import storage_mode

revision: str = "aadd574780ab"
down_revision: str | Sequence[str] | None = "a43a2b52588a"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    ts.create_dispatch_key_expiry(op.execute, storage_mode(op))


def downgrade() -> None:
    ts.drop_dispatch_key_expiry(op.execute, storage_mode(op))
