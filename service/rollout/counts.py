"""The rollout funnel's counts, kept ahead of the read so that the read costs O(small) rows
whatever the rollout's size.

Guarantees:

* Download outcomes: `apk_download_counts` holds events per (build, hour, outcome). The
  writer's download merge adds to it in the statement that stores the events
  (`service.rollout.downloads.MERGE_DOWNLOADS`: one grouped upsert per flush, in key order so
  two flushes cannot deadlock), so the counts commit or roll back with the events. Hours are
  `date_bin('1 hour', ts, 2000-01-01 UTC)`, independent of the session time zone. The funnel
  sums the hours from the start of the hour the raw window begins in (`downloads.since`): that
  sum equals the raw events with `ts >= since` exactly, because retention drops only whole
  chunks older than the window. `prune_download_counts` drops hours older than the window plus
  one chunk interval (no read sums them; a window lengthened by up to a chunk still counts
  the raw events that are left).
* Installations: `apk_installation_counts` per (version, slot, status, verified), kept by
  statement triggers with transition tables on `apk_installations` (`INSTALLATION_TRIGGERS`):
  every path that changes installations (a device's report, heartbeat verification, a device's
  deletion cascading, hand-made rows) moves the counts in the same statement, with one grouped
  upsert per statement taken in key order (no deadlock between two statements). `slot` = the
  device id's hash & 15: one build's concurrent reports spread over 16 rows instead of queueing
  on one row lock (reads sum the slots, so a slot need not be stable, only the sum).
* Snapshot (`refresh_snapshots`, run by the maintenance task after the verification step):
  per version, the devices whose latest heartbeat reports its `version_name` (from
  `device_app_versions`, which that same task keeps) and the median time from download
  completed to installed. The median is recomputed only for versions whose installation
  counts' `changes` moved since the last snapshot, read in the same statement (one MVCC
  snapshot), so no change can slip between the two. The funnel states `as_of`; a version with
  no snapshot yet (registered since the last round) is computed at read time.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import asyncpg

from service.db.errors import STATEMENT_FAILED
from service.db.time_series import DOWNLOADS

HOUR_ORIGIN = "timestamptz '2000-01-01 00:00:00+00'"


def hour_of(expr: str) -> str:
    """SQL for the start of the (UTC-aligned) hour holding `expr`."""
    return f"date_bin(interval '1 hour', {expr}, {HOUR_ORIGIN})"


# What the writer's merge would have counted for the raw events already stored: run by the
# revision that adds the table (and by benchmarks that pre-fill raw events with plain SQL).
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


# One statement each (a revision runs them one by one). PostgreSQL allows transition tables
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

# The median over a version's installs that know the download they came from.
MEDIAN = """
SELECT percentile_cont(0.5) WITHIN GROUP (
    ORDER BY extract(epoch FROM i.installed_at - i.download_completed_at)
) FROM apk_installations i
WHERE i.apk_version_id = {version} AND i.installed_at IS NOT NULL
  AND i.download_completed_at IS NOT NULL
"""

REPORTING = "SELECT count(*) FROM device_app_versions WHERE app_version = {name}"

_REFRESH = f"""
WITH changes AS (
    SELECT apk_version_id, sum(changes)::bigint AS changes FROM apk_installation_counts GROUP BY 1
), reporting AS (
    SELECT app_version, count(*) AS devices FROM device_app_versions GROUP BY 1
), todo AS (
    SELECT v.id, coalesce(r.devices, 0) AS devices, coalesce(c.changes, 0) AS changes,
           s.apk_version_id IS NULL OR s.installation_changes <> coalesce(c.changes, 0) AS stale,
           s.median_download_to_install_seconds AS median
    FROM apk_versions v
    LEFT JOIN reporting r ON r.app_version = v.version_name
    LEFT JOIN changes c ON c.apk_version_id = v.id
    LEFT JOIN apk_rollout_snapshots s ON s.apk_version_id = v.id
)
INSERT INTO apk_rollout_snapshots AS s
    (apk_version_id, devices_reporting, median_download_to_install_seconds, installation_changes, as_of)
SELECT id, devices, CASE WHEN stale THEN ({MEDIAN.format(version="todo.id")}) ELSE median END,
       changes, now()
FROM todo
ON CONFLICT (apk_version_id) DO UPDATE SET
    devices_reporting = EXCLUDED.devices_reporting,
    median_download_to_install_seconds = EXCLUDED.median_download_to_install_seconds,
    installation_changes = EXCLUDED.installation_changes,
    as_of = EXCLUDED.as_of
"""

_PRUNE = f"""
DELETE FROM apk_download_counts
WHERE bucket_start < {hour_of("now() - $1::interval")} - $2::interval
"""


@dataclass(frozen=True, slots=True)
class RefreshReport:
    versions: int = 0
    download_hours_pruned: int = 0
    error: str | None = None


async def downloads_window(conn: asyncpg.Connection, default: timedelta) -> timedelta:
    """The raw download events' window: the stored one (`telemetry retention set`) wins."""
    stored: timedelta | None = await conn.fetchval(
        "SELECT drop_after FROM retention_policies WHERE table_name = 'apk_download_events'"
    )
    return stored or default


async def refresh_snapshots(conn: asyncpg.Connection) -> int:
    """Recompute every version's snapshot (medians only where installs changed); how many."""
    return int((await conn.execute(_REFRESH)).split()[-1])


async def prune_download_counts(conn: asyncpg.Connection, window: timedelta) -> int:
    """Drop the hours no read sums any more (older than the window plus a chunk interval)."""
    return int((await conn.execute(_PRUNE, window, DOWNLOADS.chunk_interval)).split()[-1])


async def run(conn: asyncpg.Connection, default_window: timedelta) -> RefreshReport:
    """Both maintenance steps; never raises for a database error (the report carries it)."""
    try:
        versions = await refresh_snapshots(conn)
        pruned = await prune_download_counts(conn, await downloads_window(conn, default_window))
        return RefreshReport(versions, pruned)
    except STATEMENT_FAILED as exc:
        return RefreshReport(error=str(exc))
