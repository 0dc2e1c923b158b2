"""The rollout funnel of one APK build: downloads → installations → devices running it.

Each part comes from where it is cheapest to read and says how fresh it is:

* downloads started / completed / failed / cancelled: raw `apk_download_events` of the build
  (they expire: only the last `TELEMETRY_RETENTION_DOWNLOADS_SECONDS`, default 7 days, count;
  `since` states it). Counted from the (build_id, outcome, device_id, ts) index alone.
* installations by status and verified: `apk_installations` (kept as long as the device).
* devices whose latest heartbeat reports the build's `version_name`: `device_app_versions`, as
  of the last maintenance round (`service.rollout.verification`), counted by index.
* median time from download completed to installed: each installed device's last completed
  download of the build before its install, copied from the raw events onto the installation
  when the install is reported or verified (so it does not expire with them).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg

from service.api.schemas import RolloutDownloads, RolloutFunnel, RolloutInstallations

EXPIRING = ["downloads"]

_VERSION = """
SELECT id, package_name, version_code, version_name FROM apk_versions WHERE build_id = $1
"""

_DOWNLOADS = """
SELECT outcome, count(*) AS n FROM apk_download_events
WHERE build_id = $1 AND ts >= $2 GROUP BY outcome
"""

# Counts by status and the median in one pass over the version's installations. Each install
# keeps the time of the download it came from (copied when it was confirmed), so the median
# needs no raw event, and it outlives them.
_INSTALLATIONS = """
SELECT count(*) FILTER (WHERE status = 'installing') AS installing,
       count(*) FILTER (WHERE status = 'installed') AS installed,
       count(*) FILTER (WHERE status = 'failed') AS failed,
       count(*) FILTER (WHERE verified) AS verified,
       percentile_cont(0.5) WITHIN GROUP (
           ORDER BY extract(epoch FROM installed_at - download_completed_at)
       ) FILTER (WHERE installed_at IS NOT NULL AND download_completed_at IS NOT NULL) AS median
FROM apk_installations WHERE apk_version_id = $1
"""

_REPORTING = """
SELECT count(*) AS devices, max(updated_at) AS as_of FROM device_app_versions WHERE app_version = $1
"""

@dataclass(frozen=True, slots=True)
class Version:
    id: int
    package_name: str
    version_code: int
    version_name: str


async def find_version(conn: asyncpg.Connection, build_id: str) -> Version | None:
    row = await conn.fetchrow(_VERSION, build_id)
    return None if row is None else Version(**dict(row))


async def funnel(
    conn: asyncpg.Connection, build_id: str, version: Version, downloads_window: timedelta
) -> RolloutFunnel:
    """`downloads_window`: used when `retention_policies` has no row for the download events
    (the stored window, which `telemetry retention set` changes, wins)."""
    window: timedelta = (
        await conn.fetchval(
            "SELECT drop_after FROM retention_policies WHERE table_name = 'apk_download_events'"
        )
        or downloads_window
    )
    since: datetime = await conn.fetchval("SELECT now() - $1::interval", window)
    outcomes = {r["outcome"]: r["n"] for r in await conn.fetch(_DOWNLOADS, build_id, since)}
    installs = await conn.fetchrow(_INSTALLATIONS, version.id)
    reporting = await conn.fetchrow(_REPORTING, version.version_name)
    return RolloutFunnel(
        build_id=build_id,
        package_name=version.package_name,
        version_code=version.version_code,
        version_name=version.version_name,
        downloads=RolloutDownloads(
            started=outcomes.get("started", 0),
            completed=outcomes.get("completed", 0),
            failed=outcomes.get("failed", 0),
            cancelled=outcomes.get("cancelled", 0),
            since=since,
            window_seconds=window.total_seconds(),
        ),
        installations=RolloutInstallations(
            installing=installs["installing"],
            installed=installs["installed"],
            failed=installs["failed"],
            verified=installs["verified"],
        ),
        devices_reporting_version=reporting["devices"],
        devices_reporting_as_of=reporting["as_of"],
        median_download_to_install_seconds=installs["median"],
        from_expiring_events=list(EXPIRING),
    )
