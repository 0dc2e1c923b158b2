"""Check constraints get the names the models give them (six were named twice).

Revision ID: fe4482d9e874
Revises: d23037c11663
Create Date: 2025-12-03 02:00:00+00:00

The baseline and the webhooks revision passed whole names (`ck_<table>_<name>`) where the
naming convention adds that prefix itself, so these constraints were made as
`ck_<table>_ck_<table>_<name>` (the longest one cut to 63 characters with a hash by Alembic).
Autogenerate does not compare check constraints, so `migrate check` never saw it; comparing
the catalogue of a migrated head with what the models build does
(`tests/migrations/test_revisions_stand_alone.py`). A rename keeps each definition and only
updates the catalogue (partitions and chunks inherit the new name); nothing refers to these
names.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "fe4482d9e874"
down_revision: str | Sequence[str] | None = "d23037c11663"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# (table, the name the revisions gave it, the models' name)
_RENAMES = (
    (
        "device_heartbeats",
        "ck_device_heartbeats_ck_device_heartbeats_battery_pct_range",
        "ck_device_heartbeats_battery_pct_range",
    ),
    (
        "device_heartbeats",
        "ck_device_heartbeats_ck_device_heartbeats_bucket_start__1f80",
        "ck_device_heartbeats_bucket_start_not_after_ts",
    ),
    (
        "enrollment_tokens",
        "ck_enrollment_tokens_ck_enrollment_tokens_max_uses_positive",
        "ck_enrollment_tokens_max_uses_positive",
    ),
    (
        "enrollment_tokens",
        "ck_enrollment_tokens_ck_enrollment_tokens_use_count_in_range",
        "ck_enrollment_tokens_use_count_in_range",
    ),
    (
        "retention_policies",
        "ck_retention_policies_ck_retention_policies_drop_after_positive",
        "ck_retention_policies_drop_after_positive",
    ),
    (
        "webhook_deliveries",
        "ck_webhook_deliveries_ck_webhook_deliveries_status_known",
        "ck_webhook_deliveries_status_known",
    ),
)


def upgrade() -> None:
    for table, old, new in _RENAMES:
        op.execute(f"ALTER TABLE {table} RENAME CONSTRAINT {old} TO {new}")


def downgrade() -> None:
    for table, old, new in reversed(_RENAMES):
        op.execute(f"ALTER TABLE {table} RENAME CONSTRAINT {new} TO {old}")
