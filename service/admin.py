"""`telemetry admin …`: operators and enrollment tokens from the command line.

Operators are `users` rows with a role (`admin`: everything; `viewer`: every GET, 403 on
writes; `ci`: `POST /v1/apk-versions` only, for a build pipeline); their API tokens are
`sessions` rows (only the hash is stored) that may expire.
`revoke-operator` disables the operator and revokes every token; `rotate-operator` revokes every
token and issues a new one. Running services see either change within their auth cache TTL.
Both also end the operator's console sessions (`sessions` rows of kind 'console', not cached:
at once). `set-password` gives an operator a console password (argon2id) and ends its console
sessions, so a leaked password stops working everywhere once it is changed.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import re
import sys
from datetime import timedelta

import asyncpg
import msgspec

from service.api.credentials import OPERATOR_PREFIX, ROLES, Role, list_operators, new_token, token_hash
from service.api.schemas import EnrollmentTokenRequest
from service.audit.log import AuditAction, cli_actor, record
from service.console.passwords import check_strength, hash_password
from service.db.urls import asyncpg_dsn
from service.db.windows import parse_window
from service.enrollment_tokens import create_enrollment_token
from service.settings import Settings

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$")
_NEVER = "never"
_MAX_LIFETIME = timedelta(days=3650)


def parse_lifetime(text: str | None) -> timedelta | None:
    """An operator token's lifetime: a duration of at least 60 s, or `never` (None)."""
    if text is None or text.strip().lower() == _NEVER:
        return None
    lifetime = parse_window(text)
    if not timedelta(minutes=1) <= lifetime <= _MAX_LIFETIME:
        raise ValueError("--expires-in must be between 60s and 3650d, or 'never'")
    return lifetime


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """The `admin` command and its verbs."""
    admin = subparsers.add_parser("admin", help="operators and enrollment tokens")
    verbs = admin.add_subparsers(dest="verb", required=True)
    op = verbs.add_parser("create-operator", help="create an operator; prints its API token")
    op.add_argument("name")
    op.add_argument(
        "--role",
        choices=ROLES,
        default="admin",
        help="admin (default), viewer (reads only) or ci (registers APK builds only)",
    )
    op.add_argument(
        "--expires-in", default="90d", help="token lifetime, e.g. 90d, 12h, or 'never' (default 90d)"
    )
    verbs.add_parser("list-operators", help="operators, their roles, tokens and expiry")
    revoke = verbs.add_parser("revoke-operator", help="disable an operator and revoke all its tokens")
    revoke.add_argument("name")
    rotate = verbs.add_parser("rotate-operator", help="revoke an operator's tokens; prints a new one")
    rotate.add_argument("name")
    rotate.add_argument(
        "--expires-in", default=None, help="new token's lifetime (default: the previous token's)"
    )
    pw = verbs.add_parser(
        "set-password",
        help="set an operator's console password (prompted on a terminal, else one line of stdin)",
    )
    pw.add_argument("name")
    tok = verbs.add_parser("create-enrollment-token", help="mint an enrollment token")
    tok.add_argument("--expires-in", default="1d", help="e.g. 1d, 12h (default 1d)")
    tok.add_argument("--max-uses", type=int, default=1)
    tok.add_argument("--scope", default="device")
    tok.add_argument("--note", default=None)
    tok.add_argument(
        "--device-id",
        default=None,
        help="bind the token to this device id (the only kind that re-enrolls an existing id)",
    )


async def create_operator(
    conn: asyncpg.Connection, name: str, *, role: Role = "admin", expires_in: timedelta | None = None
) -> str:
    """Create operator `name` and return its API token (only its hash is stored)."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    token = new_token(OPERATOR_PREFIX)
    async with conn.transaction():
        user_id = await conn.fetchval(
            "INSERT INTO users (username, role) VALUES ($1, $2)"
            " ON CONFLICT (username) DO NOTHING RETURNING id",
            name,
            role,
        )
        if user_id is None:
            raise ValueError(f"operator {name!r} already exists")
        await conn.execute(
            "INSERT INTO sessions (user_id, token_hash, expires_at) VALUES ($1, $2, now() + $3::interval)",
            user_id,
            token_hash(token),
            expires_in,
        )
    return token


async def revoke_operator(conn: asyncpg.Connection, name: str) -> int:
    """Disable `name` and revoke its tokens; returns how many tokens were still active."""
    async with conn.transaction():
        user_id = await conn.fetchval(
            "UPDATE users SET disabled_at = coalesce(disabled_at, now()) WHERE username = $1 RETURNING id",
            name,
        )
        if user_id is None:
            raise ValueError(f"no operator {name!r}")
        status = await conn.execute(
            "UPDATE sessions SET revoked_at = now() WHERE user_id = $1 AND revoked_at IS NULL", user_id
        )
    return int(status.split()[-1])


async def rotate_operator(conn: asyncpg.Connection, name: str, *, expires_in: timedelta | None = None) -> str:
    """Revoke every token of `name` and return a new one. Its lifetime is `expires_in`, else
    that of the operator's newest token. A disabled operator is not brought back."""
    async with conn.transaction():
        user = await conn.fetchrow("SELECT id, disabled_at FROM users WHERE username = $1 FOR UPDATE", name)
        if user is None:
            raise ValueError(f"no operator {name!r}")
        if user["disabled_at"] is not None:
            raise ValueError(f"operator {name!r} is revoked; create a new operator instead")
        if expires_in is None:
            expires_in = await conn.fetchval(
                "SELECT expires_at - created_at FROM sessions WHERE user_id = $1 AND kind = 'api'"
                " ORDER BY id DESC LIMIT 1",
                user["id"],
            )
        await conn.execute(
            "UPDATE sessions SET revoked_at = now() WHERE user_id = $1 AND revoked_at IS NULL", user["id"]
        )
        token = new_token(OPERATOR_PREFIX)
        await conn.execute(
            "INSERT INTO sessions (user_id, token_hash, expires_at) VALUES ($1, $2, now() + $3::interval)",
            user["id"],
            token_hash(token),
            expires_in,
        )
    return token


async def set_password(conn: asyncpg.Connection, name: str, password: str) -> int:
    """Store `password`'s argon2id hash for operator `name` and end its console sessions;
    returns how many were live. A disabled operator cannot be given one."""
    hashed = hash_password(password)
    async with conn.transaction():
        user_id = await conn.fetchval(
            "UPDATE users SET password_hash = $2 WHERE username = $1 AND disabled_at IS NULL RETURNING id",
            name,
            hashed,
        )
        if user_id is None:
            raise ValueError(f"no active operator {name!r}")
        status = await conn.execute(
            "UPDATE sessions SET revoked_at = now()"
            " WHERE user_id = $1 AND kind = 'console' AND revoked_at IS NULL",
            user_id,
        )
    return int(status.split()[-1])


def read_password() -> str:
    """Twice at a terminal (without echo), else the first line of stdin (its newline cut)."""
    if sys.stdin.isatty():
        password = getpass.getpass("new console password: ")
        if getpass.getpass("again: ") != password:
            raise ValueError("the two passwords differ; nothing was changed")
    else:
        password = sys.stdin.readline().removesuffix("\n").removesuffix("\r")
    check_strength(password)
    return password


def _print_table(rows: list[tuple[str, str, str, int, str, str]]) -> None:
    header = ("NAME", "ROLE", "STATUS", "TOKENS", "EXPIRES", "LAST USED")
    table = [header, *[tuple(str(c) for c in row) for row in rows]]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def _check_name(name: str) -> None:
    if not _NAME.match(name):
        raise ValueError("operator name: 1-128 letters, digits or . _ @ -")


async def _run(args: argparse.Namespace, url: str) -> int:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    # Every write verb's audit row commits with its write (`service.audit`).
    who = cli_actor()
    try:
        if args.verb == "create-operator":
            _check_name(args.name)
            async with conn.transaction():
                token = await create_operator(
                    conn, args.name, role=args.role, expires_in=parse_lifetime(args.expires_in)
                )
                details = {"role": args.role, "expires_in": args.expires_in}
                await record(conn, who, AuditAction.OPERATOR_CREATE, f"operator:{args.name}", details)
            print(f"operator {args.name!r} ({args.role}) created; API token (shown once):", file=sys.stderr)
            print(token)
        elif args.verb == "list-operators":
            _print_table(await list_operators(conn))
        elif args.verb == "revoke-operator":
            async with conn.transaction():
                revoked = await revoke_operator(conn, args.name)
                details = {"tokens_revoked": revoked}
                await record(conn, who, AuditAction.OPERATOR_REVOKE, f"operator:{args.name}", details)
            print(
                f"operator {args.name!r} revoked ({revoked} active token(s)); running services refuse"
                " it within their auth cache TTL",
                file=sys.stderr,
            )
        elif args.verb == "rotate-operator":
            lifetime = parse_lifetime(args.expires_in) if args.expires_in is not None else None
            async with conn.transaction():
                token = await rotate_operator(conn, args.name, expires_in=lifetime)
                await record(conn, who, AuditAction.OPERATOR_ROTATE, f"operator:{args.name}")
            print(
                f"operator {args.name!r}: old tokens revoked (refused within the auth cache TTL);"
                " new API token (shown once):",
                file=sys.stderr,
            )
            print(token)
        elif args.verb == "set-password":
            _check_name(args.name)
            password = read_password()
            async with conn.transaction():
                ended = await set_password(conn, args.name, password)
                details = {"console_sessions_ended": ended}
                await record(conn, who, AuditAction.OPERATOR_SET_PASSWORD, f"operator:{args.name}", details)
            print(
                f"operator {args.name!r}: console password set ({ended} console session(s) ended)",
                file=sys.stderr,
            )
        elif args.verb == "create-enrollment-token":
            if args.max_uses < 1:
                raise ValueError("--max-uses must be at least 1")
            expires = parse_window(args.expires_in)
            if expires < timedelta(minutes=1):
                raise ValueError("--expires-in must be at least 60s")
            try:
                spec = msgspec.convert(
                    {
                        "expires_in_seconds": int(expires.total_seconds()),
                        "max_uses": args.max_uses,
                        "scope": args.scope,
                        "note": args.note,
                        "device_id": args.device_id,
                    },
                    EnrollmentTokenRequest,
                )
            except msgspec.ValidationError as exc:
                raise ValueError(f"invalid enrollment token: {exc}") from None
            async with conn.transaction():
                created = await create_enrollment_token(conn, created_by=None, spec=spec)
                details = {"device_id": spec.device_id, "max_uses": spec.max_uses, "scope": spec.scope}
                target = f"enrollment_token:{created.id}"
                await record(conn, who, AuditAction.ENROLLMENT_TOKEN_CREATE, target, details)
            bound = f", bound to device {spec.device_id!r}" if spec.device_id else ""
            print(
                f"enrollment token {created.id} (expires {created.expires_at.isoformat()}, "
                f"{spec.max_uses} use(s){bound}); shown once:",
                file=sys.stderr,
            )
            print(created.token)
    except asyncpg.UndefinedTableError:
        raise ValueError("the database has no schema yet: run `telemetry migrate upgrade`") from None
    finally:
        await conn.close()
    return 0


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run the parsed `admin` verb against `settings.database_url` (resolved by `service.cli`)."""
    return asyncio.run(_run(args, settings.database_url or ""))
