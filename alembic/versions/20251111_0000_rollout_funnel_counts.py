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

The triggers' functions and the backfills are this revision's own copy of the statements
`service.rollout.counts` had when it was written (that module may change; this may not).
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "a9d3e5f7b1c2"
down_revision: str | Sequence[str] | None = "d5a91f3c7b20"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TZ = sa.DateTime(timezone=True)


HOUR_ORIGIN = "timestamptz '2000-01-01 00:00:00+00'"


def hour_of(expr: str) -> str:
    """SQL for the start of the (UTC-aligned) hour holding `expr`."""
    return f"date_bin(interval '1 hour', {expr}, {HOUR_ORIGIN})"


# What the writer's merge would have counted for the raw events already stored.
BACKFILL_DOWNLOAD_COUNTS = f"""
INSERT INTO apk_download_counts AS c (build_id, bucket_start, outcome, events)
SELECT build_id, {hour_of("ts")}, outcome, count(*) FROM apk_download_events GROUP BY 1, 2, 3
ON CONFLICT (build_id, bucket_start, outcome) DO UPDATE SET events = c.events + EXCLUDED.events
"""

_SLOT = "(hashtext({row}.device_id) & 15)"

# The count rows' deltas of one statement, from its transition tables, upserted in key order:
# every statement takes its count rows in the same order, so no two can deadlock, and a
# verification round that confirms 40,000 installs costs one grouped upsert, not 40,000.
_APPLY = """
    INSERT INTO apk_installation_counts AS c
        (apk_version_id, slot, status, verified, installations, changes)
    SELECT apk_version_id, slot, status, verified, sum(delta), count(*)
    FROM ({deltas}) d
    GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
    ON CONFLICT (apk_version_id, slot, status, verified) DO UPDATE SET
        installations = c.installations + EXCLUDED.installations, changes = c.changes + EXCLUDED.changes;
"""
_COLUMNS = "apk_version_id, {slot} AS slot, status, verified, {delta} AS delta"
_ADDED = f"SELECT {_COLUMNS.format(slot=_SLOT.format(row='n'), delta=1)} FROM new_rows n"
_REMOVED = f"SELECT {_COLUMNS.format(slot=_SLOT.format(row='o'), delta=-1)} FROM old_rows o"
# An update counts only rows whose count key or median inputs changed (`changes` tells the
# snapshot to recompute the median).
_MOVED = f"""
        SELECT n.apk_version_id, {_SLOT.format(row="n")} AS slot, n.status, n.verified, 1 AS delta
        FROM new_rows n JOIN old_rows o ON o.id = n.id
        WHERE {{changed}}
        UNION ALL
        SELECT o.apk_version_id, {_SLOT.format(row="o")}, o.status, o.verified, -1
        FROM new_rows n JOIN old_rows o ON o.id = n.id
        WHERE {{changed}}"""
_CHANGED = (
    "(n.apk_version_id, n.device_id, n.status, n.verified, n.installed_at, n.download_completed_at)"
    " IS DISTINCT FROM"
    " (o.apk_version_id, o.device_id, o.status, o.verified, o.installed_at, o.download_completed_at)"
)


def _function(name: str, deltas: str) -> str:
    return f"""
CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN{_APPLY.format(deltas=deltas)}    RETURN NULL;
END
$fn$
"""


def _trigger(event: str, transition: str, function: str) -> str:
    return f"""
CREATE TRIGGER apk_installations_count_{event.lower()}
AFTER {event} ON apk_installations REFERENCING {transition}
FOR EACH STATEMENT EXECUTE FUNCTION {function}()
"""


# One statement each (run one by one). PostgreSQL allows transition tables
# only on single-event triggers: one trigger per event. (An INSERT … ON CONFLICT DO UPDATE fires
# the INSERT one for the rows it inserted and the UPDATE one for those it updated.) TRUNCATE is
# not counted: nothing truncates the table but tests, which truncate the counts too.
INSTALLATION_TRIGGERS = (
    _function("telemetry_count_installations_added", _ADDED),
    _function("telemetry_count_installations_removed", _REMOVED),
    _function("telemetry_count_installations_moved", _MOVED.format(changed=_CHANGED)),
    _trigger("INSERT", "NEW TABLE AS new_rows", "telemetry_count_installations_added"),
    _trigger("DELETE", "OLD TABLE AS old_rows", "telemetry_count_installations_removed"),
    _trigger("UPDATE", "OLD TABLE AS old_rows NEW TABLE AS new_rows", "telemetry_count_installations_moved"),
)

DROP_INSTALLATION_TRIGGERS = (
    *(
        f"DROP TRIGGER IF EXISTS apk_installations_count_{event} ON apk_installations"
        for event in ("insert", "delete", "update")
    ),
    *(f"DROP FUNCTION IF EXISTS telemetry_count_installations_{f}()" for f in ("added", "removed", "moved")),
)

BACKFILL_INSTALLATION_COUNTS = f"""
INSERT INTO apk_installation_counts (apk_version_id, slot, status, verified, installations, changes)
SELECT apk_version_id, {_SLOT.format(row="i")}, status, verified, count(*), count(*)
FROM apk_installations i GROUP BY 1, 2, 3, 4
"""


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
    for statement in INSTALLATION_TRIGGERS:
        op.execute(statement)
    op.execute(BACKFILL_INSTALLATION_COUNTS)
    op.execute(BACKFILL_DOWNLOAD_COUNTS)


def downgrade() -> None:
    for statement in DROP_INSTALLATION_TRIGGERS:
        op.execute(statement)
    op.drop_table("apk_rollout_snapshots")
    op.drop_table("apk_installation_counts")
    op.drop_table("apk_download_counts")
