"""Secrets: generation, hashing, and authentication of operators and devices.

Only SHA-256 hashes of tokens are stored. A presented token is hashed and looked up by its
hash; the stored hash is then compared with `hmac.compare_digest`, so no comparison of secret
material depends on how many leading characters match. Tokens are never logged.

Device and operator lookups are cached for `cache_ttl` seconds (the heartbeat path would
otherwise pay one query per request), in one cache of at most `cache_max_entries` credentials
(past it, the entry stored longest ago goes first). A device revocation or re-enrollment made through this
instance evicts its entries at once; one made through another instance, and an operator revoked,
rotated or demoted with `telemetry admin …`, takes effect here within the TTL. An operator token
is never cached past its own expiry.
"""

from __future__ import annotations

import hmac
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Generic, Literal, TypeVar

import asyncpg

from service.db.watchdog import DatabaseWatchdog
from service.tokens import DEVICE_PREFIX, ENROLLMENT_PREFIX, OPERATOR_PREFIX, new_token, token_hash

__all__ = ["DEVICE_PREFIX", "ENROLLMENT_PREFIX", "OPERATOR_PREFIX", "new_token", "token_hash"]


Role = Literal["admin", "viewer", "ci"]
ROLES: tuple[Role, ...] = ("admin", "viewer", "ci")


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


V = TypeVar("V")


@dataclass
class TtlCache(Generic[V]):
    """Values that expire at their own deadline (time.monotonic()), at most `max_entries` of
    them: a full cache forgets the entry stored first, never everything at once."""

    max_entries: int
    _entries: OrderedDict[str, tuple[V, float]] = field(default_factory=OrderedDict)

    def get(self, key: str, now: float) -> V | None:
        entry = self._entries.get(key)
        if entry is None or entry[1] <= now:
            return None
        return entry[0]

    def put(self, key: str, value: V, expires: float) -> None:
        self._entries.pop(key, None)
        self._entries[key] = (value, expires)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def discard(self, key: str) -> None:
        self._entries.pop(key, None)

    def discard_values(self, unwanted: Callable[[V], bool]) -> None:
        for key, (value, _) in list(self._entries.items()):
            if unwanted(value):
                del self._entries[key]

    def clear(self) -> None:
        self._entries.clear()


@dataclass
class Authenticator:
    pool: asyncpg.Pool
    cache_ttl: float = 5.0
    cache_max_entries: int = 100_000
    watchdog: DatabaseWatchdog = field(default_factory=DatabaseWatchdog)

    def __post_init__(self) -> None:
        # Keyed by the token's hash: operator and device tokens never share one (prefixes differ).
        self.cache: TtlCache[Operator | DeviceIdentity] = TtlCache(self.cache_max_entries)

    async def operator(self, token: str) -> Operator | None:
        """The operator of an active API token; `last_used_at` is updated on cache misses."""
        if not token.startswith(OPERATOR_PREFIX):
            return None
        digest = token_hash(token)
        now = time.monotonic()
        cached = self.cache.get(digest, now)
        if isinstance(cached, Operator):
            return cached
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
            self.cache.discard(digest)
            return None
        operator = Operator(row["user_id"], row["username"], row["id"], row["role"])
        ttl = self.cache_ttl if row["remaining"] is None else min(self.cache_ttl, row["remaining"])
        self.cache.put(digest, operator, now + ttl)
        return operator

    async def device(self, token: str) -> DeviceIdentity | None:
        if not token.startswith(DEVICE_PREFIX):
            return None
        digest = token_hash(token)
        now = time.monotonic()
        cached = self.cache.get(digest, now)
        if isinstance(cached, DeviceIdentity):
            return cached
        with self.watchdog.track():
            row = await self.pool.fetchrow(
                "SELECT id, token_hash, enrollment_token_id FROM devices"
                " WHERE token_hash = $1 AND credential_revoked_at IS NULL AND banned_at IS NULL",
                digest,
            )
        if row is None or not hmac.compare_digest(row["token_hash"], digest):
            self.cache.discard(digest)
            return None
        identity = DeviceIdentity(row["id"], row["enrollment_token_id"])
        self.cache.put(digest, identity, now + self.cache_ttl)
        return identity

    def forget_device(self, device_id: str) -> None:
        """Drop every cached credential of `device_id` (after a revocation or re-enrollment)."""
        self.cache.discard_values(lambda v: isinstance(v, DeviceIdentity) and v.device_id == device_id)


async def list_operators(conn: asyncpg.Connection) -> list[tuple[str, str, str, int, str, str]]:
    """Rows of (name, role, status, active tokens, expires, last used), by name."""
    rows = await conn.fetch(
        """
        SELECT u.username, u.role, u.disabled_at,
               count(s.id) AS tokens, max(s.expires_at) AS expires,
               bool_or(s.id IS NOT NULL AND s.expires_at IS NULL) AS never_expires,
               (SELECT max(last_used_at) FROM sessions WHERE user_id = u.id AND kind = 'api') AS last_used
        FROM users u
        LEFT JOIN sessions s ON s.user_id = u.id AND s.kind = 'api' AND s.revoked_at IS NULL
             AND (s.expires_at IS NULL OR s.expires_at > now())
        GROUP BY u.id ORDER BY u.username
        """
    )

    def when(value: datetime | None) -> str:
        return value.isoformat(timespec="seconds") if value is not None else "-"

    listed = []
    for r in rows:
        if r["disabled_at"] is not None:
            status = "revoked"
        else:
            status = "active" if r["tokens"] else "expired"
        expires = "never" if r["never_expires"] else when(r["expires"])
        listed.append((r["username"], r["role"], status, int(r["tokens"]), expires, when(r["last_used"])))
    return listed
