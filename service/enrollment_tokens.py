"""Minting enrollment tokens: one function for the API (`POST /v1/enrollment-tokens`) and the
CLI (`telemetry admin create-enrollment-token`). The token is returned once; only its hash is
stored."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

import asyncpg

from service.tokens import ENROLLMENT_PREFIX, new_token, token_hash


class EnrollmentTokenSpec(Protocol):
    """What a token is minted from (the API's request body is one, already validated)."""

    @property
    def scope(self) -> str: ...
    @property
    def expires_in_seconds(self) -> int: ...
    @property
    def max_uses(self) -> int: ...
    @property
    def note(self) -> str | None: ...
    @property
    def device_id(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class IssuedEnrollmentToken:
    """What minting added to its spec: `token` is the secret itself, shown once, never stored."""

    id: int
    token: str
    expires_at: datetime


async def create_enrollment_token(
    conn: asyncpg.Connection | asyncpg.Pool, *, created_by: int | None, spec: EnrollmentTokenSpec
) -> IssuedEnrollmentToken:
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
    return IssuedEnrollmentToken(row["id"], token, row["expires_at"])


@dataclass(frozen=True, slots=True)
class EnrollmentTokenState:
    """A minted token as operators see it afterwards (never its secret)."""

    id: int
    scope: str
    note: str | None
    device_id: str | None
    created_at: datetime
    expires_at: datetime
    max_uses: int
    use_count: int
    last_used_at: datetime | None
    revoked_at: datetime | None


async def list_enrollment_tokens(
    conn: asyncpg.Connection | asyncpg.Pool, limit: int
) -> list[EnrollmentTokenState]:
    """The newest `limit` tokens, newest first, spent, expired and revoked ones included."""
    rows = await conn.fetch(
        "SELECT id, scope, note, device_id, created_at, expires_at, max_uses, use_count, last_used_at,"
        " revoked_at FROM enrollment_tokens ORDER BY created_at DESC, id DESC LIMIT $1",
        limit,
    )
    return [EnrollmentTokenState(**dict(r)) for r in rows]
