"""Command lifecycle and retention, APK installations with verification, the `ci` role.

Commands: one per request_id, per-transition timestamps, result, their own retention window.
APK installations: one row per (device, version) moving forward, verified by heartbeats.

Revision ID: e8b24c6a1f93
Revises: 81159e67ec7f
Create Date: 2025-11-08 00:00:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from revision_ddl.inputs import retention_window
from revision_ddl.time_series_v1 import interval_literal
from sqlalchemy.dialects import postgresql

from alembic import op

revision: str = "e8b24c6a1f93"
down_revision: str | Sequence[str] | None = "81159e67ec7f"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TZ = sa.DateTime(timezone=True)
COMMAND_STATUSES = "status IN ('pending', 'delivered', 'executed', 'failed', 'expired')"


def upgrade() -> None:
    # --- commands: one row per request_id, followed through its lifecycle ---
    # The table had no writer before this revision; rows made by hand get a request_id of their
    # own and the lifecycle's first status.
    op.add_column("commands", sa.Column("request_id", sa.String(128), nullable=True))
    op.execute("UPDATE commands SET request_id = 'command-' || id WHERE request_id IS NULL")
    op.alter_column("commands", "request_id", existing_type=sa.String(128), nullable=False)
    op.execute("UPDATE commands SET status = 'pending' WHERE status = 'queued'")
    op.alter_column("commands", "status", existing_type=sa.String(32), server_default="pending")
    for column in ("delivered_at", "executed_at", "failed_at", "expired_at"):
        op.add_column("commands", sa.Column(column, TZ, nullable=True))
    op.add_column("commands", sa.Column("result", postgresql.JSONB(), nullable=True))
    op.add_column("commands", sa.Column("error", sa.Text(), nullable=True))
    op.create_unique_constraint(None, "commands", ["request_id"])
    op.create_check_constraint("status_known", "commands", COMMAND_STATUSES)
    op.drop_index("ix_commands_device_id", table_name="commands")
    op.create_index("ix_commands_device_id_created_at", "commands", ["device_id", "created_at"])
    op.create_index(
        "ix_commands_pending_device_id_created_at",
        "commands",
        ["device_id", "created_at"],
        postgresql_where=sa.text("status = 'pending'"),
    )
    op.create_index(
        "ix_commands_open_created_at",
        "commands",
        ["created_at"],
        postgresql_where=sa.text("status IN ('pending', 'delivered')"),
    )
    op.create_index("ix_commands_created_at", "commands", ["created_at"])
    # The commands' window: a plain table's row (NULL partition_interval), expired by DELETE.
    op.execute(
        "INSERT INTO retention_policies (table_name, drop_after, partition_interval) "
        f"VALUES ('commands', {interval_literal(retention_window(op, 'commands'))}, NULL) "
        "ON CONFLICT (table_name) DO UPDATE SET drop_after = EXCLUDED.drop_after, updated_at = now()"
    )

    # --- APK installations: one row per (device, version), moving forward ---
    now = sa.text("now()")
    op.add_column("apk_installations", sa.Column("created_at", TZ, server_default=now, nullable=False))
    op.add_column("apk_installations", sa.Column("failed_at", TZ, nullable=True))
    op.add_column("apk_installations", sa.Column("error", sa.Text(), nullable=True))
    verified = sa.Column("verified", sa.Boolean(), server_default=sa.text("false"), nullable=False)
    op.add_column("apk_installations", verified)
    op.add_column("apk_installations", sa.Column("download_completed_at", TZ, nullable=True))
    op.create_unique_constraint(None, "apk_installations", ["device_id", "apk_version_id"])
    op.create_check_constraint(
        "status_known", "apk_installations", "status IN ('installing', 'installed', 'failed')"
    )
    op.create_index(
        "ix_apk_installations_unverified",
        "apk_installations",
        ["device_id"],
        postgresql_where=sa.text("NOT verified"),
    )
    op.create_table(
        "device_app_versions",
        sa.Column("device_id", sa.String(128), nullable=False),
        sa.Column("app_version", sa.String(64), nullable=False),
        sa.Column("reported_at", TZ, nullable=False),
        sa.Column("updated_at", TZ, server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("device_id", name="pk_device_app_versions"),
    )
    op.create_index("ix_device_app_versions_app_version", "device_app_versions", ["app_version"])
    op.create_index(
        "ix_apk_download_events_build_id_outcome_device_id_ts",
        "apk_download_events",
        ["build_id", "outcome", "device_id", "ts"],
    )

    # --- the `ci` operator role: registers builds, nothing else ---
    op.drop_constraint("role_known", "users", type_="check")
    op.create_check_constraint("role_known", "users", "role IN ('admin', 'viewer', 'ci')")


def downgrade() -> None:
    op.execute("DELETE FROM sessions WHERE user_id IN (SELECT id FROM users WHERE role = 'ci')")
    # A ci operator cannot become an admin by a downgrade: it is kept, disabled, as a viewer.
    op.execute(
        "UPDATE users SET role = 'viewer', disabled_at = coalesce(disabled_at, now()) WHERE role = 'ci'"
    )
    op.drop_constraint("role_known", "users", type_="check")
    op.create_check_constraint("role_known", "users", "role IN ('admin', 'viewer')")

    op.drop_index("ix_apk_download_events_build_id_outcome_device_id_ts", table_name="apk_download_events")
    op.drop_index("ix_device_app_versions_app_version", table_name="device_app_versions")
    op.drop_table("device_app_versions")
    op.drop_index("ix_apk_installations_unverified", table_name="apk_installations")
    op.drop_constraint("status_known", "apk_installations", type_="check")
    op.drop_constraint("uq_apk_installations_device_id_apk_version_id", "apk_installations", type_="unique")
    for column in ("download_completed_at", "verified", "error", "failed_at", "created_at"):
        op.drop_column("apk_installations", column)

    op.execute("DELETE FROM retention_policies WHERE table_name = 'commands'")
    op.drop_index("ix_commands_created_at", table_name="commands")
    op.drop_index("ix_commands_open_created_at", table_name="commands")
    op.drop_index("ix_commands_pending_device_id_created_at", table_name="commands")
    op.drop_index("ix_commands_device_id_created_at", table_name="commands")
    op.create_index("ix_commands_device_id", "commands", ["device_id"])
    op.drop_constraint("status_known", "commands", type_="check")
    op.drop_constraint("uq_commands_request_id", "commands", type_="unique")
    for column in ("error", "result", "expired_at", "failed_at", "executed_at", "delivered_at", "request_id"):
        op.drop_column("commands", column)
    op.alter_column("commands", "status", existing_type=sa.String(32), server_default="queued")
