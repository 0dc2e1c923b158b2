"""`telemetry admin …`: operators and enrollment tokens from the command line."""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from datetime import timedelta

import asyncpg

from service.api.credentials import OPERATOR_PREFIX, new_token, token_hash
from service.api.enrollment import create_enrollment_token
from service.api.schemas import EnrollmentTokenRequest
from service.db.embedded import resolve_database_url
from service.db.urls import asyncpg_dsn
from service.settings import Settings

_DURATION = re.compile(r"^(?P<n>\d+)(?P<unit>[smhd]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$")


def parse_duration(text: str) -> timedelta:
    match = _DURATION.match(text.strip())
    if not match:
        raise ValueError(f"invalid duration {text!r}: use e.g. 90s, 30m, 12h, 2d")
    return timedelta(seconds=int(match["n"]) * _UNITS[match["unit"]])


async def create_operator(conn: asyncpg.Connection, name: str) -> str:
    """Create operator `name` and return its API token (only its hash is stored)."""
    token = new_token(OPERATOR_PREFIX)
    async with conn.transaction():
        user_id = await conn.fetchval(
            "INSERT INTO users (username) VALUES ($1) ON CONFLICT (username) DO NOTHING RETURNING id", name
        )
        if user_id is None:
            raise ValueError(f"operator {name!r} already exists")
        await conn.execute(
            "INSERT INTO sessions (user_id, token_hash) VALUES ($1, $2)", user_id, token_hash(token)
        )
    return token


async def _run(args: argparse.Namespace, url: str) -> int:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        if args.verb == "create-operator":
            if not _NAME.match(args.name):
                raise ValueError("operator name: 1-128 letters, digits or . _ @ -")
            token = await create_operator(conn, args.name)
            print(f"operator {args.name!r} created; its API token (shown once):", file=sys.stderr)
            print(token)
        elif args.verb == "create-enrollment-token":
            if args.max_uses < 1:
                raise ValueError("--max-uses must be at least 1")
            expires = parse_duration(args.expires_in)
            if expires < timedelta(minutes=1):
                raise ValueError("--expires-in must be at least 60s")
            created = await create_enrollment_token(
                conn,
                created_by=None,
                spec=EnrollmentTokenRequest(
                    expires_in_seconds=int(expires.total_seconds()),
                    max_uses=args.max_uses,
                    scope=args.scope,
                    note=args.note,
                ),
            )
            print(
                f"enrollment token {created.id} (expires {created.expires_at.isoformat()}, "
                f"{created.max_uses} use(s)); shown once:",
                file=sys.stderr,
            )
            print(created.token)
    except asyncpg.UndefinedTableError:
        raise ValueError("the database has no schema yet: run `telemetry migrate upgrade`") from None
    finally:
        await conn.close()
    return 0


def run_admin_command(args: argparse.Namespace, settings: Settings) -> int:
    url, _ = resolve_database_url(settings.database_url, settings.data_dir)
    return asyncio.run(_run(args, url))
