"""Heartbeat chunks compressed after TELEMETRY_COMPRESS_AFTER_SECONDS (timescale mode, TSL license).

Revision ID: 81159e67ec7f
Revises: e31c9e0a6175
Create Date: 2025-11-07 00:00:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from revision_ddl import compression_v1 as compression
from revision_ddl import rollups_v1 as rollups
from revision_ddl.inputs import compress_after, is_offline, storage_mode

from alembic import op

revision: str = "81159e67ec7f"
down_revision: str | Sequence[str] | None = "e31c9e0a6175"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _licensed() -> bool:
    """Compression needs TimescaleDB's TSL license (offline SQL assumes the default one)."""
    if storage_mode(op) != "timescale":
        return False
    if is_offline(op):
        return True
    return op.get_bind().execute(sa.text(rollups.LICENSE_SQL)).scalar() != "apache"


def upgrade() -> None:
    if _licensed():
        compression.enable_compression(op.execute, compress_after(op))


def downgrade() -> None:
    if _licensed():
        compression.disable_compression(op.execute)
