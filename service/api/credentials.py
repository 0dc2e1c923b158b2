"""Secrets: generation, hashing, and authentication of operators and devices.

Only SHA-256 hashes of tokens are stored. A presented token is hashed and looked up by its
hash; the stored hash is then compared with `hmac.compare_digest`, so no comparison of secret
material depends on how many leading characters match. Tokens are never logged.

Device and operator lookups are cached for `cache_ttl` seconds (the heartbeat path would
otherwise pay one query per request). A device revocation or re-enrollment made through this
instance evicts its entries at once; one made through another instance, and an operator revoked,
rotated or demoted with `telemetry admin …`, takes effect here within the TTL. An operator token
is never cached past its own expiry.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass, field
from typing import Literal

import asyncpg

from service.db.watchdog import DatabaseWatchdog

OPERATOR_PREFIX = "op_"
DEVICE_PREFIX = "dev_"
ENROLLMENT_PREFIX = "enr_"

Role = Literal["admin", "viewer"]
ROLES: tuple[Role, ...] = ("admin", "viewer")


def new_token(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def bearer_token(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


@dataclass(frozen=True, slots=True)
class Operator:
    user_id: int
    username: str
    session_id: int
    role: Role = "admin"


@dataclass(frozen=True, slots=True)
class DeviceIdentity:
    device_id: str
    # The enrollment token the credential was issued from (None once that token is deleted).
    enrollment_token_id: int | None = None


@dataclass
class Authenticator:
    pool: asyncpg.Pool
    cache_ttl: float = 5.0
    watchdog: DatabaseWatchdog = field(default_factory=DatabaseWatchdog)
    _devices: dict[str, tuple[DeviceIdentity, float]] = field(default_factory=dict)
    _operators: dict[str, tuple[Operator, float]] = field(default_factory=dict)

    async def operator(self, token: str) -> Operator | None:
        """The operator of an active API token; `last_used_at` is updated on cache misses."""
        if not token.startswith(OPERATOR_PREFIX):
            return None
        digest = token_hash(token)
        now = time.monotonic()
        cached = self._operators.get(digest)
        if cached and cached[1] > now:
            return cached[0]
        with self.watchdog.track():
            row = await self.pool.fetchrow(
                """
            UPDATE sessions s SET last_used_at = now()
            FROM users u
            WHERE s.token_hash = $1 AND u.id = s.user_id AND s.revoked_at IS NULL
              AND (s.expires_at IS NULL OR s.expires_at > now()) AND u.disabled_at IS NULL
            RETURNING s.id, s.token_hash, u.id AS user_id, u.username, u.role,
                      extract(epoch FROM s.expires_at - now())::float8 AS remaining
            """,
                digest,
            )
        if row is None or not hmac.compare_digest(row["token_hash"], digest):
            self._operators.pop(digest, None)
            return None
        operator = Operator(row["user_id"], row["username"], row["id"], row["role"])
        ttl = self.cache_ttl if row["remaining"] is None else min(self.cache_ttl, row["remaining"])
        if len(self._operators) > 10_000:
            self._operators.clear()
        self._operators[digest] = (operator, now + ttl)
        return operator

    async def device(self, token: str) -> DeviceIdentity | None:
        if not token.startswith(DEVICE_PREFIX):
            return None
        digest = token_hash(token)
        cached = self._devices.get(digest)
        now = time.monotonic()
        if cached and cached[1] > now:
            return cached[0]
        with self.watchdog.track():
            row = await self.pool.fetchrow(
                "SELECT id, token_hash, enrollment_token_id FROM devices"
                " WHERE token_hash = $1 AND credential_revoked_at IS NULL AND banned_at IS NULL",
                digest,
            )
        if row is None or not hmac.compare_digest(row["token_hash"], digest):
            self._devices.pop(digest, None)
            return None
        identity = DeviceIdentity(row["id"], row["enrollment_token_id"])
        if len(self._devices) > 100_000:
            self._devices.clear()
        self._devices[digest] = (identity, now + self.cache_ttl)
        return identity

    def forget_device(self, device_id: str) -> None:
        """Drop every cached credential of `device_id` (after a revocation or re-enrollment)."""
        for digest, (identity, _) in list(self._devices.items()):
            if identity.device_id == device_id:
                del self._devices[digest]
