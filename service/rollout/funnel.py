"""The rollout funnel of one APK build: downloads → installations → devices running it.

The read costs a handful of small index range scans whatever the rollout's size (100,000
devices read like 10): every part is counted ahead of the read (`service.rollout.counts`
says how and what is exact), and each part says how fresh it is:

* downloads started / completed / failed / cancelled: the build's per-hour counts over the raw
  events' window (`TELEMETRY_RETENTION_DOWNLOADS_SECONDS`, default 7 days, or the stored one):
  at most 170 hours per outcome, summed from `since`, the start of the hour the window begins
  in. They equal the raw events with `ts >= since`, which expire (`from_expiring_events`).
  Committed with the events by the writer.
* installations by status and verified: per-version counts kept by triggers on
  `apk_installations` in the statement that changes an installation: always current.
* devices whose latest heartbeat reports the build's `version_name`, and the median time from
  download completed to installed: the maintenance task's snapshot, `as_of` stated
  (`devices_reporting_as_of`, `median_as_of`). A build registered since the last round has no
  snapshot yet: then both are computed at read time (such a build has few installs) and the
  `as_of` is the read's own time.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated

import asyncpg
import msgspec
from msgspec import Meta

from service.rollout.counts import MEDIAN, REPORTING, downloads_window, hour_of
from service.rollout.installations import InstallationStatus

EXPIRING = ["downloads"]


class RolloutDownloads(msgspec.Struct, forbid_unknown_fields=True):
    started: int
    completed: int
    failed: int
    cancelled: int
    since: Annotated[
        datetime,
        Meta(
            description="Raw download events expire: counted from here on"
            " (the start of the hour the window begins in)"
        ),
    ]
    window_seconds: float


class RolloutInstallations(msgspec.Struct, forbid_unknown_fields=True):
    installing: int
    installed: int
    failed: int
    verified: int


# The answer of `GET /v1/apk-versions/{build_id}/rollout` as it is: the API serves it unchanged.
class RolloutFunnel(msgspec.Struct, forbid_unknown_fields=True):
    build_id: str
    package_name: str
    version_code: int
    version_name: str
    downloads: RolloutDownloads
    installations: RolloutInstallations
    devices_reporting_version: Annotated[
        int, Meta(description="Devices whose latest heartbeat reports this version_name")
    ]
    devices_reporting_as_of: Annotated[
        datetime | None, Meta(description="When the maintenance task counted devices_reporting_version")
    ]
    median_download_to_install_seconds: float | None
    median_as_of: Annotated[
        datetime | None, Meta(description="When the maintenance task computed the median")
    ]
    from_expiring_events: Annotated[
        list[str], Meta(description="The fields computed from raw events that expire (apk_download_events)")
    ]


_VERSION = """
SELECT id, package_name, version_code, version_name FROM apk_versions WHERE build_id = $1
"""

_SINCE = f"SELECT {hour_of('now() - $1::interval')}"

_DOWNLOADS = """
SELECT outcome, sum(events)::bigint AS n FROM apk_download_counts
WHERE build_id = $1 AND bucket_start >= $2 GROUP BY outcome
"""

_BY_STATUS = ",\n       ".join(
    f"coalesce(sum(installations) FILTER (WHERE status = '{status}'), 0)::bigint AS {status}"
    for status in InstallationStatus
)
_INSTALLATIONS = f"""
SELECT {_BY_STATUS},
       coalesce(sum(installations) FILTER (WHERE verified), 0)::bigint AS verified
FROM apk_installation_counts WHERE apk_version_id = $1
"""

_SNAPSHOT = """
SELECT devices_reporting, median_download_to_install_seconds AS median, as_of
FROM apk_rollout_snapshots WHERE apk_version_id = $1
"""

_LIVE = f"""
SELECT ({REPORTING.format(name="$2::text")}) AS devices_reporting,
       ({MEDIAN.format(version="$1::bigint")}) AS median, now() AS as_of
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
    conn: asyncpg.Connection, build_id: str, version: Version, downloads_window_default: timedelta
) -> RolloutFunnel:
    """`downloads_window_default`: used when `retention_policies` has no row for the download
    events (the stored window, which `telemetry retention set` changes, wins)."""
    window = await downloads_window(conn, downloads_window_default)
    since: datetime = await conn.fetchval(_SINCE, window)
    outcomes = {r["outcome"]: r["n"] for r in await conn.fetch(_DOWNLOADS, build_id, since)}
    installs = await conn.fetchrow(_INSTALLATIONS, version.id)
    snapshot = await conn.fetchrow(_SNAPSHOT, version.id) or await conn.fetchrow(
        _LIVE, version.id, version.version_name
    )
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
            **{status: installs[status] for status in InstallationStatus.values()},
            verified=installs["verified"],
        ),
        devices_reporting_version=snapshot["devices_reporting"],
        devices_reporting_as_of=snapshot["as_of"],
        median_download_to_install_seconds=snapshot["median"],
        median_as_of=snapshot["as_of"],
        from_expiring_events=list(EXPIRING),
    )
