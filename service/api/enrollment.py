"""Enrollment: operators mint enrollment tokens; a device exchanges one for its credential.

An enrollment token is spent atomically (one UPDATE that checks revocation, expiry and the use
limit), so concurrent enrollments can never exceed `max_uses`. Unknown, expired, revoked and
used-up tokens all get the same 401 message, and repeated failures from one client are
throttled (429). A device id that already has an active credential is not re-issued one (409):
an operator revokes the old credential first.
"""

from __future__ import annotations

from datetime import timedelta

import asyncpg
from aiohttp import web

from service.api.auth import require_operator
from service.api.credentials import DEVICE_PREFIX, ENROLLMENT_PREFIX, new_token, token_hash
from service.api.errors import ApiError, not_found, unauthorized
from service.api.responses import json_response
from service.api.schemas import EnrollmentTokenRequest, EnrollmentTokenResponse, EnrollRequest, EnrollResponse
from service.api.state import services
from service.api.validation import decode

INVALID_ENROLLMENT = "invalid enrollment token"
_MAX_ID = 2**63 - 1


async def create_enrollment_token(
    conn: asyncpg.Connection | asyncpg.Pool, *, created_by: int | None, spec: EnrollmentTokenRequest
) -> EnrollmentTokenResponse:
    token = new_token(ENROLLMENT_PREFIX)
    row = await conn.fetchrow(
        "INSERT INTO enrollment_tokens (token_hash, scope, created_by, expires_at, max_uses, note)"
        " VALUES ($1, $2, $3, now() + $4::interval, $5, $6) RETURNING id, expires_at",
        token_hash(token),
        spec.scope,
        created_by,
        timedelta(seconds=spec.expires_in_seconds),
        spec.max_uses,
        spec.note,
    )
    return EnrollmentTokenResponse(
        id=row["id"], token=token, scope=spec.scope, expires_at=row["expires_at"], max_uses=spec.max_uses
    )


async def post_enrollment_token(request: web.Request) -> web.Response:
    operator = await require_operator(request)
    spec = await decode(request, EnrollmentTokenRequest)
    created = await create_enrollment_token(services(request).pool, created_by=operator.user_id, spec=spec)
    return json_response(created, status=201)


async def revoke_enrollment_token(request: web.Request) -> web.Response:
    await require_operator(request)
    raw = request.match_info["token_id"]
    # ASCII digits only, and within bigint: anything else names no token (and int() alone would
    # take " 1", "1_0" or non-ASCII digits, and pass a value the query cannot bind: a 500).
    if not (raw.isascii() and raw.isdigit()) or int(raw) > _MAX_ID:
        raise not_found("no such enrollment token", field="token_id")
    token_id = int(raw)
    revoked = await services(request).pool.fetchval(
        "UPDATE enrollment_tokens SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1 RETURNING id",
        token_id,
    )
    if revoked is None:
        raise not_found("no such enrollment token", field="token_id")
    return json_response({"id": token_id, "revoked": True})


def _client(request: web.Request) -> str:
    return request.remote or "unknown"


async def enroll(request: web.Request) -> web.Response:
    svc = services(request)
    client = _client(request)
    wait = svc.enrollment_throttle.retry_after(client)
    if wait is not None:
        raise ApiError(
            429,
            "too_many_attempts",
            "too many failed enrollments; retry later",
            headers={"Retry-After": str(wait)},
        )
    body = await decode(request, EnrollRequest)
    digest = token_hash(body.enrollment_token)
    device_token = new_token(DEVICE_PREFIX)
    async with svc.pool.acquire() as conn:
        async with conn.transaction():
            spent = await conn.fetchrow(
                """
                UPDATE enrollment_tokens SET use_count = use_count + 1, last_used_at = now()
                WHERE token_hash = $1 AND revoked_at IS NULL AND expires_at > now()
                  AND use_count < max_uses
                RETURNING id, scope
                """,
                digest,
            )
            if spent is not None:
                # Insert, or re-issue for a device whose credential an operator revoked.
                issued = await conn.fetchval(
                    """
                    INSERT INTO devices (id, token_hash, enrollment_token_id) VALUES ($1, $2, $3)
                    ON CONFLICT (id) DO UPDATE SET token_hash = EXCLUDED.token_hash,
                        enrollment_token_id = EXCLUDED.enrollment_token_id, enrolled_at = now(),
                        credential_revoked_at = NULL
                    WHERE devices.credential_revoked_at IS NOT NULL
                    RETURNING id
                    """,
                    body.device_id,
                    token_hash(device_token),
                    spent["id"],
                )
                if issued is None:
                    raise _AlreadyEnrolled(spent["id"])
                await conn.execute(
                    "INSERT INTO enrollment_events (enrollment_token_id, device_id, outcome, remote_addr)"
                    " VALUES ($1, $2, 'enrolled', $3)",
                    spent["id"],
                    body.device_id,
                    client,
                )
                await conn.execute(
                    "INSERT INTO device_events (device_id, event_type, details) VALUES ($1, 'enrolled', $2)",
                    body.device_id,
                    {"enrollment_token_id": spent["id"], "scope": spent["scope"]},
                )
        if spent is None:
            await conn.execute(
                "INSERT INTO enrollment_events (device_id, outcome, remote_addr) VALUES ($1, 'refused', $2)",
                body.device_id,
                client,
            )
            svc.enrollment_throttle.failed(client)
            svc.metrics.enrollment_failures.inc()
            raise unauthorized(INVALID_ENROLLMENT)
    return json_response(EnrollResponse(device_id=body.device_id, device_token=device_token), status=201)


class _AlreadyEnrolled(ApiError):
    def __init__(self, token_id: int) -> None:
        super().__init__(
            409,
            "already_enrolled",
            "this device id already has an active credential; an operator must revoke it first",
            field="device_id",
        )
