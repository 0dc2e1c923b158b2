"""APK builds and rollouts: CI registers builds, devices report installs, operators watch.

* `POST /v1/apk-versions` (operator role `admin` or `ci`): 201 registered; 200 when the same
  build (every field equal) is registered again; 409 when its `build_id` or its
  `(package_name, version_code)` is already taken by different content. The database's unique
  constraints decide, so concurrent registrations of one build agree.
* `GET /v1/apk-versions?package_name=` (operator): builds, newest version first.
* `POST /v1/apk-installations` (device): one row per (device, version), forward only:
  installing → installed | failed, and failed → installing | installed (a retry). A repeated
  status is 200 with nothing changed; a backward one (out of installed, or failed → failed after
  installed...) is 409 with the current state. One `INSERT … ON CONFLICT DO UPDATE … WHERE`
  statement holds the rule, so two reports racing cannot move a row backward.
* `GET /v1/apk-versions/{build_id}/rollout` (operator): see `service.rollout.funnel`.
"""

from __future__ import annotations

import asyncpg
from aiohttp import web

from service.api import request_id
from service.api.auth import require_device, require_operator
from service.api.errors import ApiError, not_found
from service.api.responses import json_response
from service.api.schemas import (
    ApkInstallation,
    ApkInstallationReport,
    ApkVersion,
    ApkVersionList,
    ApkVersionRequest,
    ErrorDetail,
    InstallationConflict,
    PackageFilter,
)
from service.api.state import services
from service.api.validation import convert, decode, query_limit
from service.rollout import funnel

VERSION_COLUMNS = (
    "package_name, version_code, version_name, build_id, sha256, size_bytes, ci_commit_sha, ci_run_id"
)

_REGISTER = f"""
INSERT INTO apk_versions ({VERSION_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
ON CONFLICT DO NOTHING
RETURNING {VERSION_COLUMNS}, created_at
"""

_TAKEN = f"""
SELECT {VERSION_COLUMNS}, created_at FROM apk_versions
WHERE build_id = $3 OR (package_name = $1 AND version_code = $2)
"""

# Allowed moves (old → new): installing → installed | failed; failed → installing | installed.
_REPORT = """
WITH version AS (SELECT id FROM apk_versions WHERE build_id = $2::text)
INSERT INTO apk_installations AS i
    (device_id, apk_version_id, status, error, installed_at, failed_at, created_at, updated_at,
     download_completed_at)
SELECT $1::text, version.id, $3::text, $4::text,
       CASE WHEN $3::text = 'installed' THEN now() END, CASE WHEN $3::text = 'failed' THEN now() END,
       now(), now(),
       -- Installed: the download it came from, one probe of the (build, outcome, device) index.
       CASE WHEN $3::text = 'installed' THEN (
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
WHERE (i.status = 'installing' AND EXCLUDED.status IN ('installed', 'failed'))
   OR (i.status = 'failed' AND EXCLUDED.status IN ('installing', 'installed'))
RETURNING i.status, i.verified, i.error, i.created_at, i.updated_at, i.installed_at, i.failed_at,
          (xmax = 0) AS inserted
"""

_INSTALLATION = """
SELECT i.status, i.verified, i.error, i.created_at, i.updated_at, i.installed_at, i.failed_at
FROM apk_installations i JOIN apk_versions v ON v.id = i.apk_version_id
WHERE i.device_id = $1 AND v.build_id = $2
"""


def _version(row: asyncpg.Record) -> ApkVersion:
    return ApkVersion(**dict(row))


async def register_version(request: web.Request) -> web.Response:
    await require_operator(request)
    body = await decode(request, ApkVersionRequest)
    values = (
        body.package_name,
        body.version_code,
        body.version_name,
        body.build_id,
        body.sha256,
        body.size_bytes,
        body.ci_commit_sha,
        body.ci_run_id,
    )
    async with services(request).pool.acquire() as conn:
        row = await conn.fetchrow(_REGISTER, *values)
        if row is not None:
            return json_response(_version(row), status=201)
        taken = await conn.fetch(_TAKEN, body.package_name, body.version_code, body.build_id)
    if len(taken) == 1 and tuple(taken[0][name] for name in _names()) == values:
        return json_response(_version(taken[0]), status=200)
    same_build = any(r["build_id"] == body.build_id for r in taken)
    raise ApiError(
        409,
        "build_conflict",
        "build_id is already registered with different content"
        if same_build
        else "package_name and version_code are already registered for another build",
        field="build_id" if same_build else "version_code",
    )


def _names() -> list[str]:
    return [name.strip() for name in VERSION_COLUMNS.split(",")]


async def list_versions(request: web.Request) -> web.Response:
    await require_operator(request)
    package = request.query.get("package_name")
    if package is not None:
        package = convert({"package_name": package}, PackageFilter).package_name
    limit = query_limit(request)
    rows = await services(request).pool.fetch(
        f"SELECT {VERSION_COLUMNS}, created_at FROM apk_versions"
        " WHERE $1::text IS NULL OR package_name = $1"
        " ORDER BY package_name, version_code DESC LIMIT $2",
        package,
        limit,
    )
    return json_response(ApkVersionList(versions=[_version(r) for r in rows]))


async def report_installation(request: web.Request) -> web.Response:
    svc = services(request)
    device = await require_device(request)
    body = await decode(request, ApkInstallationReport)
    async with svc.pool.acquire() as conn:
        row = await conn.fetchrow(_REPORT, device.device_id, body.build_id, body.status, body.error)
        if row is not None:
            installation = _installation(device.device_id, body.build_id, row, changed=True)
            return json_response(installation, status=201 if row["inserted"] else 200)
        current = await conn.fetchrow(_INSTALLATION, device.device_id, body.build_id)
    if current is None:
        raise not_found(f"no APK build {body.build_id!r}", field="build_id")
    installation = _installation(device.device_id, body.build_id, current, changed=False)
    if current["status"] == body.status:
        return json_response(installation)
    conflict = InstallationConflict(
        error=ErrorDetail(
            code="status_conflict",
            message=f"the installation is {current['status']!r}; a report cannot move it to {body.status!r}",
            field="status",
            request_id=request_id.of(request),
        ),
        installation=installation,
    )
    return json_response(conflict, status=409)


def _installation(device_id: str, build_id: str, row: asyncpg.Record, *, changed: bool) -> ApkInstallation:
    return ApkInstallation(
        device_id=device_id,
        build_id=build_id,
        status=row["status"],
        verified=row["verified"],
        error=row["error"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        installed_at=row["installed_at"],
        failed_at=row["failed_at"],
        changed=changed,
    )


async def get_rollout(request: web.Request) -> web.Response:
    await require_operator(request)
    svc = services(request)
    build_id = request.match_info["build_id"]
    async with svc.pool.acquire() as conn:
        version = await funnel.find_version(conn, build_id)
        if version is None:
            raise not_found(f"no APK build {build_id!r}", field="build_id")
        result = await funnel.funnel(conn, build_id, version, svc.settings.retention.apk_download_events)
    return json_response(result)
