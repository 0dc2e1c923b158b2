"""Enrollment: operators mint enrollment tokens; a device exchanges one for its credential.

Guarantees:
- A token is spent atomically (one UPDATE that checks revocation, expiry, the use limit and,
  for a token bound to a device id, that id), so concurrent enrollments can never exceed
  `max_uses`. Unknown, expired, revoked, used-up tokens and tokens bound to another device id
  all get the same 401 bytes.
- A new device id enrolls with any valid token. An existing id (a factory-reset or reinstated
  device) re-enrolls only with a token bound to it (else 409, token not spent); that rotates its
  credential: the old one stops working at once in this instance and within the auth cache TTL
  in others. Deciding between "new" and "existing" is the database's (INSERT … ON CONFLICT), so
  two first enrollments of one id cannot both win.
- A banned id (revoked, not reinstated) cannot enroll with any token: 403 `device_banned`,
  token not spent. The ban is only revealed to a caller holding a valid token.
- Failed guesses are throttled per client address (`service.api.client_address`): the attempt
  is reserved before the database is asked and handed back when the token was valid, so a
  parallel burst is limited too. Refusals are counted in `enrollment_events`, one row per
  outcome, address and window.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import asyncpg
from aiohttp import web

from service.api.audit import actor
from service.api.auth import require_operator
from service.api.client_address import request_client
from service.api.credentials import DEVICE_PREFIX, new_token, token_hash
from service.api.errors import ApiError, not_found, unauthorized
from service.api.parameters import TokenIdPath
from service.api.responses import json_response
from service.api.schemas import EnrollmentTokenRequest, EnrollmentTokenResponse, EnrollRequest, EnrollResponse
from service.api.state import services
from service.api.validation import decode
from service.audit.log import AuditAction, record
from service.enrollment_tokens import create_enrollment_token
from service.events import log as events
from service.events.catalogue import DeviceEnrolled, DeviceReEnrolled

INVALID_ENROLLMENT = "invalid enrollment token"
# Refused attempts are counted in one row per outcome, client address and window of this length.
REFUSAL_WINDOW = timedelta(hours=1)


async def post_enrollment_token(request: web.Request) -> web.Response:
    operator = await require_operator(request)
    spec = await decode(request, EnrollmentTokenRequest)
    async with services(request).pool.acquire() as conn, conn.transaction():
        created = await create_enrollment_token(conn, created_by=operator.user_id, spec=spec)
        details = {"device_id": spec.device_id, "max_uses": spec.max_uses, "scope": spec.scope}
        target = f"enrollment_token:{created.id}"
        await record(conn, actor(request, operator), AuditAction.ENROLLMENT_TOKEN_CREATE, target, details)
    response = EnrollmentTokenResponse(
        created.id, created.token, spec.scope, created.expires_at, spec.max_uses, spec.device_id
    )
    return json_response(response, status=201)


async def revoke_enrollment_token(request: web.Request, params: TokenIdPath) -> web.Response:
    operator = await require_operator(request)
    token_id = params.token_id
    async with services(request).pool.acquire() as conn, conn.transaction():
        revoked = await conn.fetchval(
            "UPDATE enrollment_tokens SET revoked_at = coalesce(revoked_at, now())"
            " WHERE id = $1 RETURNING id",
            token_id,
        )
        if revoked is None:
            raise not_found("no such enrollment token", field="token_id")
        target = f"enrollment_token:{token_id}"
        await record(conn, actor(request, operator), AuditAction.ENROLLMENT_TOKEN_REVOKE, target)
    return json_response({"id": token_id, "revoked": True})


class _Refused(ApiError):
    """An enrollment refused after the token was checked; `outcome` is its audit name."""

    outcome = "refused"


class _AlreadyEnrolled(_Refused):
    outcome = "already_enrolled"

    def __init__(self) -> None:
        super().__init__(
            409,
            "already_enrolled",
            "this device id is already enrolled; re-enrolling it needs an enrollment token bound to it",
            field="device_id",
        )


class _Banned(_Refused):
    outcome = "banned"

    def __init__(self) -> None:
        super().__init__(
            403,
            "device_banned",
            "this device id was revoked; an operator must reinstate it before it can enroll",
            field="device_id",
        )


async def _record_refusal(conn: asyncpg.Connection, outcome: str, device_id: str, client: str) -> None:
    """One row per (outcome, address, window) with a count: a flood cannot grow the table."""
    await conn.execute(
        """
        INSERT INTO enrollment_events (device_id, outcome, remote_addr, window_start)
        VALUES ($1, $2, $3, date_bin($4::interval, now(), TIMESTAMPTZ '2000-01-01'))
        ON CONFLICT (outcome, remote_addr, window_start)
        DO UPDATE SET attempts = enrollment_events.attempts + 1, device_id = EXCLUDED.device_id
        """,
        device_id,
        outcome,
        client[:64],
        REFUSAL_WINDOW,
    )


async def _issue(conn: asyncpg.Connection, spent: Any, device_id: str, credential_hash: str) -> bool:
    """Store the credential of `device_id`; True when the id was new. Raises `_Banned` or
    `_AlreadyEnrolled` (the caller's transaction then rolls back and the token is not spent)."""
    if spent["device_id"] is None:
        inserted = await conn.fetchval(
            "INSERT INTO devices (id, token_hash, enrollment_token_id) VALUES ($1, $2, $3)"
            " ON CONFLICT (id) DO NOTHING RETURNING id",
            device_id,
            credential_hash,
            spent["id"],
        )
        if inserted is not None:
            return True
        banned = await conn.fetchval("SELECT banned_at IS NOT NULL FROM devices WHERE id = $1", device_id)
        raise _Banned() if banned else _AlreadyEnrolled()
    # A token bound to this id: enroll it, or rotate its credential unless it is banned.
    row = await conn.fetchrow(
        """
        INSERT INTO devices (id, token_hash, enrollment_token_id) VALUES ($1, $2, $3)
        ON CONFLICT (id) DO UPDATE SET token_hash = EXCLUDED.token_hash,
            enrollment_token_id = EXCLUDED.enrollment_token_id, enrolled_at = now(),
            credential_revoked_at = NULL
        WHERE devices.banned_at IS NULL
        RETURNING xmax = 0 AS inserted
        """,
        device_id,
        credential_hash,
        spent["id"],
    )
    if row is None:
        raise _Banned()
    return bool(row["inserted"])


async def enroll(request: web.Request) -> web.Response:
    svc = services(request)
    client = request_client(request, svc.settings.trusted_proxies)
    # Throttled before the body is read: a refused address costs nothing past its headers.
    # Failures plus attempts in flight stay under the limit: a parallel burst cannot all pass.
    attempt, wait = await svc.enrollment_throttle.reserve(client)
    if attempt is None:
        raise ApiError(
            429,
            "too_many_attempts",
            "too many failed enrollments; retry later",
            headers={"Retry-After": str(wait)},
            close=True,
        )
    try:
        body = await decode(request, EnrollRequest)
    except BaseException:  # a malformed body is not a guess: not counted as a failure
        svc.enrollment_throttle.release(attempt)
        raise
    failed = False
    device_token = new_token(DEVICE_PREFIX)
    try:
        async with svc.pool.acquire() as conn:
            try:
                async with conn.transaction():
                    spent = await conn.fetchrow(
                        """
                        UPDATE enrollment_tokens SET use_count = use_count + 1, last_used_at = now()
                        WHERE token_hash = $1 AND revoked_at IS NULL AND expires_at > now()
                          AND use_count < max_uses AND (device_id IS NULL OR device_id = $2)
                        RETURNING id, scope, device_id
                        """,
                        token_hash(body.enrollment_token),
                        body.device_id,
                    )
                    if spent is None:
                        failed = True
                        raise unauthorized(INVALID_ENROLLMENT)
                    new = await _issue(conn, spent, body.device_id, token_hash(device_token))
                    await conn.execute(
                        "INSERT INTO enrollment_events (enrollment_token_id, device_id, outcome, remote_addr)"
                        " VALUES ($1, $2, 'enrolled', $3)",
                        spent["id"],
                        body.device_id,
                        client[:64],
                    )
                    # Never seen until its first heartbeat; a re-enrolled device keeps its presence.
                    await conn.execute(
                        "INSERT INTO device_presence (device_id) VALUES ($1) ON CONFLICT DO NOTHING",
                        body.device_id,
                    )
                    kind = DeviceEnrolled if new else DeviceReEnrolled
                    await events.record(
                        conn, kind(enrollment_token_id=spent["id"], scope=spent["scope"]), body.device_id
                    )
            except _Refused as refused:
                await _record_refusal(conn, refused.outcome, body.device_id, client)
                raise
            except ApiError:
                if failed:
                    await _record_refusal(conn, "refused", body.device_id, client)
                    svc.metrics.enrollment_failures.inc()
                raise
    finally:
        if failed:
            svc.enrollment_throttle.fail(attempt)
        else:
            svc.enrollment_throttle.release(attempt)
    # A re-enrollment rotated the credential: the old one must not live on in this cache.
    svc.auth.forget_device(body.device_id)
    return json_response(EnrollResponse(device_id=body.device_id, device_token=device_token), status=201)
