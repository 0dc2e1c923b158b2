"""Minting enrollment tokens: one function for the API (`POST /v1/enrollment-tokens`) and the
CLI (`telemetry admin create-enrollment-token`). The token is returned once; only its hash is
stored."""

from __future__ import annotations

from datetime import timedelta

import asyncpg

from service.api.credentials import ENROLLMENT_PREFIX, new_token, token_hash
from service.api.schemas import EnrollmentTokenRequest, EnrollmentTokenResponse


async def create_enrollment_token(
    conn: asyncpg.Connection | asyncpg.Pool, *, created_by: int | None, spec: EnrollmentTokenRequest
) -> EnrollmentTokenResponse:
    token = new_token(ENROLLMENT_PREFIX)
    row = await conn.fetchrow(
        "INSERT INTO enrollment_tokens (token_hash, scope, created_by, expires_at, max_uses, note, device_id)"
        " VALUES ($1, $2, $3, now() + $4::interval, $5, $6, $7) RETURNING id, expires_at",
        token_hash(token),
        spec.scope,
        created_by,
        timedelta(seconds=spec.expires_in_seconds),
        spec.max_uses,
        spec.note,
        spec.device_id,
    )
    return EnrollmentTokenResponse(
        id=row["id"],
        token=token,
        scope=spec.scope,
        expires_at=row["expires_at"],
        max_uses=spec.max_uses,
        device_id=spec.device_id,
    )
