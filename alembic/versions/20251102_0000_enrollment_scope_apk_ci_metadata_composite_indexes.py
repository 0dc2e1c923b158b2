"""Enrollment token scope and last use, APK CI metadata, composite indexes.

Revision ID: a43a2b52588a
Revises: 7ac6ecbe4e31
Create Date: 2025-11-02 00:00:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "a43a2b52588a"
down_revision: str | Sequence[str] | None = "7ac6ecbe4e31"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "enrollment_tokens", sa.Column("scope", sa.String(64), server_default="device", nullable=False)
    )
    op.add_column("enrollment_tokens", sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True))

    op.add_column("apk_versions", sa.Column("ci_commit_sha", sa.String(64), nullable=True))
    op.add_column("apk_versions", sa.Column("ci_run_id", sa.String(128), nullable=True))
    op.add_column("apk_versions", sa.Column("sha256", sa.String(64), nullable=True))
    op.add_column("apk_versions", sa.Column("size_bytes", sa.BigInteger(), nullable=True))

    op.create_index(
        "ix_fcm_dispatches_device_id_sent_at", "fcm_dispatches", ["device_id", sa.text("sent_at DESC")]
    )
    op.create_index(
        "ix_apk_download_events_build_id_ts", "apk_download_events", ["build_id", sa.text("ts DESC")]
    )
    op.create_index(
        "ix_apk_download_events_token_id_ts", "apk_download_events", ["token_id", sa.text("ts DESC")]
    )


def downgrade() -> None:
    op.drop_index("ix_apk_download_events_token_id_ts", table_name="apk_download_events")
    op.drop_index("ix_apk_download_events_build_id_ts", table_name="apk_download_events")
    op.drop_index("ix_fcm_dispatches_device_id_sent_at", table_name="fcm_dispatches")
    for column in ("size_bytes", "sha256", "ci_run_id", "ci_commit_sha"):
        op.drop_column("apk_versions", column)
    op.drop_column("enrollment_tokens", "last_used_at")
    op.drop_column("enrollment_tokens", "scope")
