"""The rollout funnel's counts kept ahead of the read, and the maintenance task's snapshot.

Per-hour download counts, per-version installation counts (kept by triggers), the snapshot of
devices reporting each version and of the median download → install time.

Revision ID: a9d3e5f7b1c2
Revises: d5a91f3c7b20
Create Date: 2025-11-11 00:00:00+00:00

The funnel used to count a build's raw download events, its installations and the devices
reporting its version at every read: work proportional to the rollout (100,000 devices: 150-320
ms). See `service.rollout.counts` for what each table holds and why the counts stay exact. The
tables are plain in both storage modes; the upgrade fills them from the rows already stored.
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op
from service.rollout import counts

revision: str = "a9d3e5f7b1c2"
down_revision: str | Sequence[str] | None = "d5a91f3c7b20"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "apk_download_counts",
        sa.Column("build_id", sa.String(128), nullable=False),
        sa.Column("bucket_start", TZ, nullable=False),
        sa.Column("outcome", sa.String(32), nullable=False),
        sa.Column("events", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("build_id", "bucket_start", "outcome", name="pk_apk_download_counts"),
    )
    op.create_table(
        "apk_installation_counts",
        sa.Column("apk_version_id", sa.BigInteger(), nullable=False),
        sa.Column("slot", sa.SmallInteger(), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("verified", sa.Boolean(), nullable=False),
        sa.Column("installations", sa.BigInteger(), nullable=False),
        sa.Column("changes", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(
            "apk_version_id", "slot", "status", "verified", name="pk_apk_installation_counts"
        ),
    )
    op.create_table(
        "apk_rollout_snapshots",
        sa.Column("apk_version_id", sa.BigInteger(), nullable=False),
        sa.Column("devices_reporting", sa.BigInteger(), nullable=False),
        sa.Column("median_download_to_install_seconds", sa.Double(), nullable=True),
        sa.Column("installation_changes", sa.BigInteger(), nullable=False),
        sa.Column("as_of", TZ, nullable=False),
        sa.PrimaryKeyConstraint("apk_version_id", name="pk_apk_rollout_snapshots"),
    )
    # Counts and triggers in one transaction with the backfill: no installation can change
    # between the two (the revision's transaction holds the table's lock from CREATE TRIGGER).
    for statement in counts.INSTALLATION_TRIGGERS:
        op.execute(statement)
    op.execute(counts.BACKFILL_INSTALLATION_COUNTS)
    op.execute(counts.BACKFILL_DOWNLOAD_COUNTS)


def downgrade() -> None:
    for statement in counts.DROP_INSTALLATION_TRIGGERS:
        op.execute(statement)
    op.drop_table("apk_rollout_snapshots")
    op.drop_table("apk_installation_counts")
    op.drop_table("apk_download_counts")
