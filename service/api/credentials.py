"""Secrets: generation, hashing, and authentication of operators and devices.

Only SHA-256 hashes of tokens are stored. A presented token is hashed and looked up by its
hash; the stored hash is then compared with `hmac.compare_digest`, so no comparison of secret
material depends on how many leading characters match. Tokens are never logged.

Device lookups are cached for `cache_ttl` seconds (the heartbeat path would otherwise pay one
query per request); a revocation made through this instance evicts the entry at once, and one
made elsewhere takes effect within the TTL.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass, field

import asyncpg

from service.db.watchdog import DatabaseWatchdog

OPERATOR_PREFIX = "op_"
DEVICE_PREFIX = "dev_"
ENROLLMENT_PREFIX = "enr_"


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


@dataclass(frozen=True, slots=True)
class DeviceIdentity:
    device_id: str


@dataclass
class Authenticator:
    pool: asyncpg.Pool
    cache_ttl: float = 5.0
    watchdog: DatabaseWatchdog = field(default_factory=DatabaseWatchdog)
    _devices: dict[str, tuple[str, float]] = field(default_factory=dict)
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
            RETURNING s.id, s.token_hash, u.id AS user_id, u.username
            """,
                digest,
            )
        if row is None or not hmac.compare_digest(row["token_hash"], digest):
            self._operators.pop(digest, None)
            return None
        operator = Operator(row["user_id"], row["username"], row["id"])
        if len(self._operators) > 10_000:
            self._operators.clear()
        self._operators[digest] = (operator, now + self.cache_ttl)
        return operator

    async def device(self, token: str) -> DeviceIdentity | None:
        if not token.startswith(DEVICE_PREFIX):
            return None
        digest = token_hash(token)
        cached = self._devices.get(digest)
        now = time.monotonic()
        if cached and cached[1] > now:
            return DeviceIdentity(cached[0])
        with self.watchdog.track():
            row = await self.pool.fetchrow(
                "SELECT id, token_hash FROM devices WHERE token_hash = $1 AND credential_revoked_at IS NULL",
                digest,
            )
        if row is None or not hmac.compare_digest(row["token_hash"], digest):
            self._devices.pop(digest, None)
            return None
        if len(self._devices) > 100_000:
            self._devices.clear()
        self._devices[digest] = (row["id"], now + self.cache_ttl)
        return DeviceIdentity(row["id"])

    def forget_device(self, device_id: str) -> None:
        for digest, (cached_id, _) in list(self._devices.items()):
            if cached_id == device_id:
                del self._devices[digest]
