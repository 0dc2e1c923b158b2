"""The fleet's days the daily rollup has not closed yet, kept by the maintenance task.

Revision ID: f2c7a9d41e58
Revises: e8b24c6a1f93
Create Date: 2025-11-10 00:00:00+00:00

`fleet_daily` materializes whole days only (a continuous aggregate never materializes a
partial bucket), so the newest day or two of a fleet history had to be counted at read time
from every device's hourly rows: `count(DISTINCT device_id)` over up to 26 hours x the fleet.
This table holds those days, computed once per hourly watermark move by the maintenance task
(`service.retention.recent_days`), in both storage modes.
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "f2c7a9d41e58"
down_revision: str | Sequence[str] | None = "e8b24c6a1f93"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "fleet_daily_recent",
        sa.Column("day", sa.DateTime(timezone=True), nullable=False),
        sa.Column("devices_seen", sa.BigInteger(), nullable=False),
        sa.Column("heartbeats", sa.BigInteger(), nullable=False),
        sa.Column("battery_sum", sa.BigInteger(), nullable=True),
        sa.Column("battery_avg", sa.Double(), nullable=True),
        sa.Column("covered_until", sa.DateTime(timezone=True), nullable=False),
        sa.Column("computed_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("day", name="pk_fleet_daily_recent"),
    )


def downgrade() -> None:
    op.drop_table("fleet_daily_recent")
