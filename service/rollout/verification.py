"""Heartbeat verification of installs: a maintenance step, not a cost on the heartbeat path.

A heartbeat whose `app_version` equals the `version_name` of an APK version a device has an
installation row for confirms that install: the row becomes `installed` with `verified = true`.

Why a maintenance step: batched heartbeat ingest is the product's hottest path, and most
heartbeats report a version nothing waits on. Doing this in the heartbeat flush would add a
join per heartbeat row to every flush; here one round per maintenance interval does:

1. `record_app_versions`: the latest reported `app_version` of every device that sent heartbeats
   since the previous round (`device_heartbeats` over the last `lookback` only, pruned to the
   newest partitions or chunks), upserted into `device_app_versions` (moving forward by the
   heartbeat's `ts`). The rollout funnel counts "devices reporting this version" from it by
   index, without reading raw heartbeats.
2. `verify_installations`: only installation rows not yet verified (a partial index holds just
   those) are joined with `device_app_versions`.

So the heartbeat path pays nothing, and a confirmation lags by at most one maintenance interval.
The lookback is two intervals plus the accepted clock skew, so one failed or skipped round
loses nothing; the first round after a start reads the whole raw window.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import asyncpg

from service.db.errors import STATEMENT_FAILED
from service.rollout.installations import InstallationStatus

_RECORD = """
INSERT INTO device_app_versions AS d (device_id, app_version, reported_at, updated_at)
SELECT DISTINCT ON (device_id) device_id, app_version, ts, now()
FROM device_heartbeats
WHERE bucket_start >= now() - $1::interval AND app_version IS NOT NULL
ORDER BY device_id, ts DESC
ON CONFLICT (device_id) DO UPDATE
SET app_version = EXCLUDED.app_version, reported_at = EXCLUDED.reported_at, updated_at = now()
WHERE d.reported_at < EXCLUDED.reported_at
"""

# The `install.verified` event (`service.events.catalogue`) in the same statement, for exactly
# the rows it confirmed.
_VERIFY = f"""
WITH verified AS (
UPDATE apk_installations i
SET status = '{InstallationStatus.INSTALLED}', verified = true,
    installed_at = coalesce(i.installed_at, now()),
    download_completed_at = coalesce(i.download_completed_at, (
        SELECT max(e.ts) FROM apk_download_events e
        WHERE e.build_id = v.build_id AND e.outcome = 'completed' AND e.device_id = i.device_id
          AND e.ts <= coalesce(i.installed_at, now())
    )),
    updated_at = now()
FROM apk_versions v, device_app_versions d
WHERE NOT i.verified AND v.id = i.apk_version_id AND d.device_id = i.device_id
  AND d.app_version = v.version_name
RETURNING i.device_id, v.build_id, v.version_name
), recorded AS (
    INSERT INTO events (device_id, type, payload)
    SELECT device_id, 'install.verified',
           jsonb_build_object('build_id', build_id, 'version_name', version_name)
    FROM verified ORDER BY device_id, build_id
)
SELECT count(*) FROM verified
"""


@dataclass(frozen=True, slots=True)
class VerificationReport:
    devices_recorded: int = 0
    installs_verified: int = 0
    error: str | None = None


async def record_app_versions(conn: asyncpg.Connection, lookback: timedelta) -> int:
    """Upsert the latest app version of each device that sent heartbeats within `lookback`."""
    return int((await conn.execute(_RECORD, lookback)).split()[-1])


async def verify_installations(conn: asyncpg.Connection) -> int:
    """Confirm the unverified installs whose device now reports their version; how many."""
    return int(await conn.fetchval(_VERIFY))


async def run(conn: asyncpg.Connection, lookback: timedelta) -> VerificationReport:
    """Both steps; never raises for a database error (the report carries it)."""
    recorded = 0
    try:
        recorded = await record_app_versions(conn, lookback)
        return VerificationReport(recorded, await verify_installations(conn))
    except STATEMENT_FAILED as exc:
        return VerificationReport(recorded, error=str(exc))
