"""An installation's lifecycle: one row per (device, APK version), its one status enum, and the
state machine a device's report runs.

Allowed moves (old → new): installing → installed | failed, and failed → installing | installed
(a retry). A repeated status changes nothing; any other move (out of installed, or failed →
failed after installed...) is refused. One `INSERT … ON CONFLICT DO UPDATE … WHERE` statement
holds the rule, so two reports racing cannot move a row backward. A move to failed records its
`install.failed` event in the same transaction. Heartbeats confirm an install later
(`service.rollout.verification`). The `apk_installations` table's `status_known` check is
`InstallationStatus.check_constraint()` (a test compares it with the live database's).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from service.db.statuses import CheckedStatus
from service.events import log as events
from service.events.catalogue import InstallFailed


class InstallationStatus(CheckedStatus):
    INSTALLING = "installing"
    INSTALLED = "installed"
    FAILED = "failed"


# old status → the statuses a report may move it to.
MOVES = {
    InstallationStatus.INSTALLING: (InstallationStatus.INSTALLED, InstallationStatus.FAILED),
    InstallationStatus.FAILED: (InstallationStatus.INSTALLING, InstallationStatus.INSTALLED),
}

_ALLOWED = "\n   OR ".join(
    f"(i.status = '{old}' AND EXCLUDED.status IN {InstallationStatus.sql_list(new)})"
    for old, new in MOVES.items()
)

_REPORT = f"""
WITH version AS (SELECT id FROM apk_versions WHERE build_id = $2::text)
INSERT INTO apk_installations AS i
    (device_id, apk_version_id, status, error, installed_at, failed_at, created_at, updated_at,
     download_completed_at)
SELECT $1::text, version.id, $3::text, $4::text,
       CASE WHEN $3::text = '{InstallationStatus.INSTALLED}' THEN now() END,
       CASE WHEN $3::text = '{InstallationStatus.FAILED}' THEN now() END,
       now(), now(),
       -- Installed: the download it came from, one probe of the (build, outcome, device) index.
       CASE WHEN $3::text = '{InstallationStatus.INSTALLED}' THEN (
           SELECT max(ts) FROM apk_download_events
           WHERE build_id = $2::text AND outcome = 'completed' AND device_id = $1::text AND ts <= now()
       ) END
FROM version
ON CONFLICT (device_id, apk_version_id) DO UPDATE SET
    status = EXCLUDED.status,
    error = EXCLUDED.error,
    installed_at = coalesce(EXCLUDED.installed_at, i.installed_at),
    failed_at = coalesce(EXCLUDED.failed_at, i.failed_at),
    download_completed_at = coalesce(EXCLUDED.download_completed_at, i.download_completed_at),
    updated_at = now()
WHERE {_ALLOWED}
RETURNING i.status, i.verified, i.error, i.created_at, i.updated_at, i.installed_at, i.failed_at,
          (xmax = 0) AS inserted
"""

_VERSION_NAME = "SELECT version_name FROM apk_versions WHERE build_id = $1"

_INSTALLATION = """
SELECT i.status, i.verified, i.error, i.created_at, i.updated_at, i.installed_at, i.failed_at
FROM apk_installations i JOIN apk_versions v ON v.id = i.apk_version_id
WHERE i.device_id = $1 AND v.build_id = $2
"""


@dataclass(frozen=True, slots=True)
class Installation:
    """An installation as stored, after a report."""

    status: str
    verified: bool
    error: str | None
    created_at: datetime
    updated_at: datetime
    installed_at: datetime | None
    failed_at: datetime | None

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> Installation:
        return cls(**{name: row[name] for name in cls.__dataclass_fields__})


@dataclass(frozen=True, slots=True)
class ReportOutcome:
    """`changed`: the report moved (or `created`: inserted) the installation; otherwise
    `installation` is its unchanged state, whose status equals the report's (a repeat) or
    refused the move (a conflict)."""

    installation: Installation
    changed: bool
    created: bool = False


async def report(
    conn: asyncpg.Connection, device_id: str, build_id: str, status: str, error: str | None
) -> ReportOutcome | None:
    """Apply a device's report; None when `build_id` names no APK build."""
    async with conn.transaction():
        row = await conn.fetchrow(_REPORT, device_id, build_id, status, error)
        if row is not None and row["status"] == InstallationStatus.FAILED:
            # A move to failed (the report changed the row): its event, in its transaction.
            version_name = await conn.fetchval(_VERSION_NAME, build_id)
            await events.record(
                conn, InstallFailed(build_id=build_id, version_name=version_name, error=error), device_id
            )
    if row is not None:
        return ReportOutcome(Installation.from_row(row), changed=True, created=row["inserted"])
    current = await conn.fetchrow(_INSTALLATION, device_id, build_id)
    if current is None:
        return None
    return ReportOutcome(Installation.from_row(current), changed=False)
