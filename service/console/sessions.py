"""Console sessions: rows of `sessions` with `kind = 'console'`, beside the API tokens.

Guarantees:
- The session's secret (`cs_…`, 256 random bits) is only in the operator's cookie; the table
  holds its SHA-256, as for API tokens. A console secret is never accepted as a bearer token
  (the API takes only `op_…` tokens) and an API token is never accepted as a cookie (lookups
  here read `kind = 'console'` only).
- A session ends at the first of: `IDLE` without a request, `ABSOLUTE` after login, logout,
  the operator disabled (`revoke-operator`), its tokens rotated (`rotate-operator` revokes
  every row of the operator, console sessions included) or its password set again.
- Only `admin` and `viewer` operators log in; a `ci` operator registers builds, nothing else.
- The cookie is HttpOnly, SameSite=Lax, path `/console/`, and Secure when the request came
  over TLS or through a trusted proxy (`TELEMETRY_TRUSTED_PROXIES`) saying `X-Forwarded-Proto:
  https`.
"""

from __future__ import annotations

import hmac
import ipaddress
from dataclasses import dataclass
from datetime import timedelta

import asyncpg
from aiohttp import web

from service.api.credentials import new_token, token_hash
from service.console import csrf
from service.settings import IPNetwork

COOKIE = "telemetry_console"
PREFIX = "cs_"
IDLE = timedelta(minutes=30)
ABSOLUTE = timedelta(hours=12)
CONSOLE_ROLES = ("admin", "viewer")
# An idle deadline is pushed forward by a request at most once a minute: a page that polls
# does not write a row every few seconds.
_TOUCH_EVERY = timedelta(minutes=1)


@dataclass(frozen=True, slots=True)
class ConsoleSession:
    session_id: int
    user_id: int
    username: str
    role: str
    csrf_token: str

    @property
    def can_write(self) -> bool:
        return self.role == "admin"


async def start(conn: asyncpg.Connection, user_id: int) -> str:
    """A new console session for `user_id`; returns its secret (for the cookie only)."""
    secret = new_token(PREFIX)
    await conn.execute(
        "INSERT INTO sessions (user_id, token_hash, expires_at, last_used_at, kind)"
        " VALUES ($1, $2, now() + $3::interval, now(), 'console')",
        user_id,
        token_hash(secret),
        ABSOLUTE,
    )
    return secret


async def resume(pool: asyncpg.Pool, secret: str | None) -> ConsoleSession | None:
    """The live session whose cookie is `secret`, its idle deadline moved on; else None."""
    if not secret or not secret.startswith(PREFIX) or len(secret) > 128:
        return None
    digest = token_hash(secret)
    row = await pool.fetchrow(
        """
        WITH live AS (
            SELECT s.id, s.token_hash, u.id AS user_id, u.username, u.role, s.last_used_at
            FROM sessions s JOIN users u ON u.id = s.user_id
            WHERE s.token_hash = $1 AND s.kind = 'console' AND s.revoked_at IS NULL
              AND s.expires_at > now() AND s.last_used_at > now() - $2::interval
              AND u.disabled_at IS NULL AND u.role = ANY($4::text[])
        ), touched AS (
            UPDATE sessions SET last_used_at = now()
            WHERE id = (SELECT id FROM live WHERE last_used_at < now() - $3::interval)
        )
        SELECT id, token_hash, user_id, username, role FROM live
        """,
        digest,
        IDLE,
        _TOUCH_EVERY,
        list(CONSOLE_ROLES),
    )
    if row is None or not hmac.compare_digest(row["token_hash"], digest):
        return None
    return ConsoleSession(row["id"], row["user_id"], row["username"], row["role"], csrf.session_token(secret))


async def end(pool: asyncpg.Pool, secret: str | None) -> None:
    """Logout: the session whose cookie is `secret` stops working at once (no cache)."""
    if secret and secret.startswith(PREFIX):
        await pool.execute(
            "UPDATE sessions SET revoked_at = now()"
            " WHERE token_hash = $1 AND kind = 'console' AND revoked_at IS NULL",
            token_hash(secret),
        )


def came_over_tls(request: web.Request, proxies: tuple[IPNetwork, ...]) -> bool:
    """TLS to us, or a trusted proxy (the peer itself) says its client used https."""
    if request.transport is not None and request.transport.get_extra_info("sslcontext") is not None:
        return True
    peer = request.remote
    if not peer or not proxies:
        return False
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return False
    trusted = any(address.version == net.version and address in net for net in proxies)
    forwarded = request.headers.get("X-Forwarded-Proto", "").split(",")[-1].strip().lower()
    return trusted and forwarded == "https"


def set_cookie(response: web.StreamResponse, name: str, value: str, *, secure: bool, strict: bool) -> None:
    response.set_cookie(
        name,
        value,
        path="/console/",
        httponly=True,
        samesite="Strict" if strict else "Lax",
        secure=secure,
        max_age=int(ABSOLUTE.total_seconds()),
    )
