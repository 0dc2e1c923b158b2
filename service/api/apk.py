"""APK builds and rollouts: CI registers builds, devices report installs, operators watch.

* `POST /v1/apk-versions` (operator role `admin` or `ci`): 201 registered; 200 when the same
  build (every field equal) is registered again; 409 when its `build_id` or its
  `(package_name, version_code)` is already taken by different content. The database's unique
  constraints decide, so concurrent registrations of one build agree.
* `GET /v1/apk-versions?package_name=` (operator): builds, newest version first.
* `POST /v1/apk-installations` (device): the installation's state machine
  (`service.rollout.installations`): 201 created, 200 moved forward or repeated (nothing
  changed), 409 with the current state for a move it refuses.
* `GET /v1/apk-versions/{build_id}/rollout` (operator): see `service.rollout.funnel`.
"""

from __future__ import annotations

from dataclasses import asdict

import asyncpg
from aiohttp import web

from service.api.audit import actor
from service.api.auth import require_device, require_operator
from service.api.errors import ApiError, not_found, status_conflict
from service.api.parameters import ApkVersionsQuery, BuildIdPath
from service.api.responses import json_response
from service.api.schemas import (
    ApkInstallation,
    ApkInstallationReport,
    ApkVersion,
    ApkVersionList,
    ApkVersionRequest,
    InstallationConflict,
)
from service.api.state import services
from service.api.validation import decode
from service.audit.log import AuditAction, record
from service.rollout import funnel, installations

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


def _version(row: asyncpg.Record) -> ApkVersion:
    return ApkVersion(**dict(row))


async def register_version(request: web.Request) -> web.Response:
    operator = await require_operator(request)
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
    who = actor(request, operator)
    target = f"apk_version:{body.build_id}"
    details = {"package_name": body.package_name, "version_code": body.version_code}
    async with services(request).pool.acquire() as conn:
        async with conn.transaction():
            row = await conn.fetchrow(_REGISTER, *values)
            if row is not None:
                await record(
                    conn, who, AuditAction.APK_VERSION_REGISTER, target, {**details, "created": True}
                )
                return json_response(_version(row), status=201)
        taken = await conn.fetch(_TAKEN, body.package_name, body.version_code, body.build_id)
        if len(taken) == 1 and tuple(taken[0][name] for name in _names()) == values:
            await record(conn, who, AuditAction.APK_VERSION_REGISTER, target, {**details, "created": False})
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


async def versions(
    conn: asyncpg.Connection | asyncpg.Pool, package: str | None, limit: int
) -> list[ApkVersion]:
    """Registered builds, by package and newest version code first (the API's and the console's)."""
    rows = await conn.fetch(
        f"SELECT {VERSION_COLUMNS}, created_at FROM apk_versions"
        " WHERE $1::text IS NULL OR package_name = $1"
        " ORDER BY package_name, version_code DESC LIMIT $2",
        package,
        limit,
    )
    return [_version(r) for r in rows]


async def list_versions(request: web.Request, params: ApkVersionsQuery) -> web.Response:
    await require_operator(request)
    found = await versions(services(request).pool, params.package_name, params.limit)
    return json_response(ApkVersionList(versions=found))


async def report_installation(request: web.Request) -> web.Response:
    svc = services(request)
    device = await require_device(request)
    body = await decode(request, ApkInstallationReport)
    async with svc.pool.acquire() as conn:
        outcome = await installations.report(conn, device.device_id, body.build_id, body.status, body.error)
    if outcome is None:
        raise not_found(f"no APK build {body.build_id!r}", field="build_id")
    installation = _installation(device.device_id, body.build_id, outcome)
    if outcome.changed:
        return json_response(installation, status=201 if outcome.created else 200)
    current = outcome.installation.status
    if current == body.status:
        return json_response(installation)
    message = f"the installation is {current!r}; a report cannot move it to {body.status!r}"
    conflict = InstallationConflict(
        error=status_conflict(request, message, "status"), installation=installation
    )
    return json_response(conflict, status=409)


def _installation(device_id: str, build_id: str, outcome: installations.ReportOutcome) -> ApkInstallation:
    state = asdict(outcome.installation)
    return ApkInstallation(device_id=device_id, build_id=build_id, changed=outcome.changed, **state)


async def get_rollout(request: web.Request, params: BuildIdPath) -> web.Response:
    await require_operator(request)
    svc = services(request)
    build_id = params.build_id
    async with svc.pool.acquire() as conn:
        version = await funnel.find_version(conn, build_id)
        if version is None:
            raise not_found(f"no APK build {build_id!r}", field="build_id")
        result = await funnel.funnel(conn, build_id, version, svc.settings.retention.apk_download_events)
    return json_response(result)
