"""Baseline: core, time-series (hypertables or partitioned tables), APK and audit tables.

Revision ID: 7ac6ecbe4e31
Revises:
Create Date: 2025-11-01 00:00:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from revision_ddl import time_series_v1 as ts
from revision_ddl.inputs import partition_lookahead, retention_window, storage_mode
from sqlalchemy.dialects import postgresql

from alembic import op

revision: str = "7ac6ecbe4e31"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TZ = sa.DateTime(timezone=True)
NOW = sa.text("now()")
# The time-series tables this revision creates.
_TIME_SERIES = (ts.HEARTBEATS, ts.DISPATCHES, ts.DOWNLOADS)


def _time_series(table: ts.TimeSeriesTable, *elements: sa.Column | sa.Constraint) -> None:
    mode = storage_mode(op)
    kwargs = {"postgresql_partition_by": ts.postgres_partition_by(table)} if mode == "postgres" else {}
    op.create_table(table.name, *elements, **kwargs)


def upgrade() -> None:
    mode = storage_mode(op)
    if mode == "timescale":
        ts.create_extension(op.execute)
    else:
        ts.create_partition_functions(op.execute)

    op.create_table(
        "users",
        sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column("username", sa.String(128), nullable=False),
        sa.Column("created_at", TZ, server_default=NOW, nullable=False),
        sa.Column("disabled_at", TZ, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_users"),
        sa.UniqueConstraint("username", name="uq_users_username"),
    )
    op.create_table(
        "sessions",
        sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column("user_id", sa.BigInteger(), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("created_at", TZ, server_default=NOW, nullable=False),
        sa.Column("expires_at", TZ, nullable=True),
        sa.Column("last_used_at", TZ, nullable=True),
        sa.Column("revoked_at", TZ, nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], ondelete="CASCADE", name="fk_sessions_user_id_users"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_sessions"),
        sa.UniqueConstraint("token_hash", name="uq_sessions_token_hash"),
    )
    op.create_index("ix_sessions_user_id", "sessions", ["user_id"])
    op.create_table(
        "enrollment_tokens",
        sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("created_by", sa.BigInteger(), nullable=True),
        sa.Column("created_at", TZ, server_default=NOW, nullable=False),
        sa.Column("expires_at", TZ, nullable=False),
        sa.Column("max_uses", sa.Integer(), server_default="1", nullable=False),
        sa.Column("use_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column("revoked_at", TZ, nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.CheckConstraint("max_uses > 0", name="ck_enrollment_tokens_max_uses_positive"),
        sa.CheckConstraint(
            "use_count >= 0 AND use_count <= max_uses", name="ck_enrollment_tokens_use_count_in_range"
        ),
        sa.ForeignKeyConstraint(
            ["created_by"], ["users.id"], ondelete="SET NULL", name="fk_enrollment_tokens_created_by_users"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_enrollment_tokens"),
        sa.UniqueConstraint("token_hash", name="uq_enrollment_tokens_token_hash"),
    )
    op.create_table(
        "devices",
        sa.Column("id", sa.String(128), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("enrollment_token_id", sa.BigInteger(), nullable=True),
        sa.Column("enrolled_at", TZ, server_default=NOW, nullable=False),
        sa.Column("credential_revoked_at", TZ, nullable=True),
        sa.ForeignKeyConstraint(
            ["enrollment_token_id"],
            ["enrollment_tokens.id"],
            ondelete="SET NULL",
            name="fk_devices_enrollment_token_id_enrollment_tokens",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_devices"),
        sa.UniqueConstraint("token_hash", name="uq_devices_token_hash"),
    )

    op.create_table(
        "retention_policies",
        sa.Column("table_name", sa.String(63), nullable=False),
        sa.Column("drop_after", sa.Interval(), nullable=False),
        sa.Column("partition_interval", sa.Interval(), nullable=False),
        sa.Column("updated_at", TZ, server_default=NOW, nullable=False),
        sa.CheckConstraint("drop_after > interval '0'", name="ck_retention_policies_drop_after_positive"),
        sa.PrimaryKeyConstraint("table_name", name="pk_retention_policies"),
    )

    # --- time series ---
    _time_series(
        ts.HEARTBEATS,
        sa.Column("device_id", sa.String(128), nullable=False),
        sa.Column("bucket_start", TZ, nullable=False),
        sa.Column("ts", TZ, nullable=False),
        sa.Column("received_at", TZ, server_default=NOW, nullable=False),
        sa.Column("status", sa.String(64), nullable=False),
        sa.Column("battery_pct", sa.SmallInteger(), nullable=False),
        sa.Column("app_version", sa.String(64), nullable=True),
        sa.Column("network", sa.String(32), nullable=True),
        sa.Column("extra", postgresql.JSONB(), nullable=True),
        sa.CheckConstraint("battery_pct BETWEEN 0 AND 100", name="ck_device_heartbeats_battery_pct_range"),
        sa.CheckConstraint("bucket_start <= ts", name="ck_device_heartbeats_bucket_start_not_after_ts"),
        sa.PrimaryKeyConstraint("device_id", "bucket_start", name="pk_device_heartbeats"),
    )
    op.create_index(
        "ix_device_heartbeats_device_id_ts", "device_heartbeats", ["device_id", sa.text("ts DESC")]
    )

    op.create_table(
        "fcm_dispatch_keys",
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("dispatch_id", sa.BigInteger(), nullable=False),
        sa.Column("sent_at", TZ, nullable=False),
        sa.PrimaryKeyConstraint("request_id", name="pk_fcm_dispatch_keys"),
        sa.UniqueConstraint(
            "request_id", "dispatch_id", "sent_at", name="uq_fcm_dispatch_keys_request_id_dispatch_id_sent_at"
        ),
    )
    op.execute("CREATE SEQUENCE fcm_dispatches_id_seq AS bigint")
    _time_series(
        ts.DISPATCHES,
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("sent_at", TZ, nullable=False),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("device_id", sa.String(128), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("payload", postgresql.JSONB(), nullable=True),
        sa.Column("status", sa.String(32), server_default="pending", nullable=False),
        sa.Column("created_by", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(
            ["request_id", "id", "sent_at"],
            ["fcm_dispatch_keys.request_id", "fcm_dispatch_keys.dispatch_id", "fcm_dispatch_keys.sent_at"],
            ondelete="CASCADE",
            name="fk_fcm_dispatches_request_id_id_sent_at_fcm_dispatch_keys",
        ),
        sa.PrimaryKeyConstraint("id", "sent_at", name="pk_fcm_dispatches"),
    )
    op.create_index("ix_fcm_dispatches_request_id", "fcm_dispatches", ["request_id"])

    op.execute("CREATE SEQUENCE apk_download_events_id_seq AS bigint")
    _time_series(
        ts.DOWNLOADS,
        sa.Column(
            "id",
            sa.BigInteger(),
            server_default=sa.text("nextval('apk_download_events_id_seq')"),
            nullable=False,
        ),
        sa.Column("ts", TZ, nullable=False),
        sa.Column("build_id", sa.String(128), nullable=False),
        sa.Column("device_id", sa.String(128), nullable=False),
        sa.Column("token_id", sa.BigInteger(), nullable=True),
        sa.Column("outcome", sa.String(32), nullable=False),
        sa.Column("bytes_downloaded", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id", "ts", name="pk_apk_download_events"),
    )

    for table in _TIME_SERIES:
        window = retention_window(op, table.name)
        ts.after_create(op.execute, mode, table, window, partition_lookahead(op))

    # --- APK management ---
    op.create_table(
        "apk_versions",
        sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column("package_name", sa.String(255), nullable=False),
        sa.Column("version_code", sa.Integer(), nullable=False),
        sa.Column("version_name", sa.String(64), nullable=False),
        sa.Column("build_id", sa.String(128), nullable=False),
        sa.Column("created_at", TZ, server_default=NOW, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_apk_versions"),
        sa.UniqueConstraint("build_id", name="uq_apk_versions_build_id"),
        sa.UniqueConstraint("package_name", "version_code", name="uq_apk_versions_package_name_version_code"),
    )
    op.create_table(
        "apk_installations",
        sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column("device_id", sa.String(128), nullable=False),
        sa.Column("apk_version_id", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("installed_at", TZ, nullable=True),
        sa.Column("updated_at", TZ, server_default=NOW, nullable=False),
        sa.ForeignKeyConstraint(
            ["device_id"], ["devices.id"], ondelete="CASCADE", name="fk_apk_installations_device_id_devices"
        ),
        sa.ForeignKeyConstraint(
            ["apk_version_id"], ["apk_versions.id"], name="fk_apk_installations_apk_version_id_apk_versions"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_apk_installations"),
    )
    op.create_index("ix_apk_installations_device_id", "apk_installations", ["device_id"])
    op.create_index("ix_apk_installations_apk_version_id", "apk_installations", ["apk_version_id"])

    # --- audit ---
    op.create_table(
        "device_events",
        sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column("device_id", sa.String(128), nullable=False),
        sa.Column("event_type", sa.String(64), nullable=False),
        sa.Column("details", postgresql.JSONB(), nullable=True),
        sa.Column("created_at", TZ, server_default=NOW, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_device_events"),
    )
    op.create_index("ix_device_events_device_id_created_at", "device_events", ["device_id", "created_at"])
    op.create_table(
        "enrollment_events",
        sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column("enrollment_token_id", sa.BigInteger(), nullable=True),
        sa.Column("device_id", sa.String(128), nullable=True),
        sa.Column("outcome", sa.String(32), nullable=False),
        sa.Column("remote_addr", sa.String(64), nullable=True),
        sa.Column("created_at", TZ, server_default=NOW, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_enrollment_events"),
    )
    op.create_index("ix_enrollment_events_enrollment_token_id", "enrollment_events", ["enrollment_token_id"])
    op.create_table(
        "commands",
        sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column("device_id", sa.String(128), nullable=False),
        sa.Column("command", sa.String(64), nullable=False),
        sa.Column("payload", postgresql.JSONB(), nullable=True),
        sa.Column("status", sa.String(32), server_default="queued", nullable=False),
        sa.Column("created_by", sa.BigInteger(), nullable=True),
        sa.Column("created_at", TZ, server_default=NOW, nullable=False),
        sa.Column("updated_at", TZ, server_default=NOW, nullable=False),
        sa.ForeignKeyConstraint(
            ["created_by"], ["users.id"], ondelete="SET NULL", name="fk_commands_created_by_users"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_commands"),
    )
    op.create_index("ix_commands_device_id", "commands", ["device_id"])


def downgrade() -> None:
    mode = storage_mode(op)
    for table in ("commands", "enrollment_events", "device_events", "apk_installations", "apk_versions"):
        op.drop_table(table)
    for table in _TIME_SERIES:
        ts.before_drop(op.execute, mode, table)
    op.drop_table("apk_download_events")
    op.execute("DROP SEQUENCE apk_download_events_id_seq")
    op.drop_table("fcm_dispatches")
    op.execute("DROP SEQUENCE fcm_dispatches_id_seq")
    op.drop_table("fcm_dispatch_keys")
    op.drop_table("device_heartbeats")
    for table in ("retention_policies", "devices", "enrollment_tokens", "sessions", "users"):
        op.drop_table(table)
    if mode == "postgres":
        ts.drop_partition_functions(op.execute)
