"""Operator passwords: `telemetry admin set-password`, argon2id at rest, and the vendored assets
pinned by checksum."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import asyncpg

from service.admin import create_operator
from service.console import passwords

ROOT = Path(__file__).resolve().parents[2]


def _telemetry(db_url: str, mode: str, *args: str, stdin: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": db_url, "TELEMETRY_STORAGE_MODE": mode}
    return subprocess.run(
        [sys.executable, "-m", "service", *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_set_password_reads_stdin_and_stores_only_an_argon2id_hash(db_url, mode, conn):
    await create_operator(conn, "carol", role="viewer")
    result = _telemetry(db_url, mode, "admin", "set-password", "carol", stdin="a long enough secret\n")
    assert result.returncode == 0, result.stderr
    assert "console password set" in result.stderr
    stored = await conn.fetchval("SELECT password_hash FROM users WHERE username = 'carol'")
    assert stored.startswith("$argon2id$") and "a long enough secret" not in stored
    assert await passwords.verify(stored, "a long enough secret")
    assert not await passwords.verify(stored, "a long enough secreT")


async def test_set_password_refuses_a_short_password_and_an_unknown_operator(db_url, mode, conn):
    await create_operator(conn, "carol")
    short = _telemetry(db_url, mode, "admin", "set-password", "carol", stdin="short\n")
    assert short.returncode == 2 and "10-256 characters" in short.stderr
    assert await conn.fetchval("SELECT password_hash FROM users WHERE username = 'carol'") is None
    unknown = _telemetry(db_url, mode, "admin", "set-password", "nobody", stdin="a long enough secret\n")
    assert unknown.returncode == 2 and "no active operator 'nobody'" in unknown.stderr


async def test_no_stored_password_never_matches():
    assert not await passwords.verify(None, "anything at all")
    assert not await passwords.verify("not a hash", "anything at all")
    assert not await passwords.verify(passwords.hash_password("x" * 20), "y" * 100_000)


def test_the_vendored_assets_match_their_pinned_checksums():
    result = subprocess.run(
        [sys.executable, "scripts/vendor-assets"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


async def test_the_console_is_not_open_to_ci_operators(api):
    conn = await asyncpg.connect(api.db_url)
    try:
        await create_operator(conn, "ci-bot", role="ci")
        await conn.execute(
            "UPDATE users SET password_hash = $1 WHERE username = 'ci-bot'",
            passwords.hash_password("ci bot password"),
        )
    finally:
        await conn.close()
    from tests.support.console import log_in

    status, _ = await log_in(api.client, "ci-bot", "ci bot password")
    assert status == 401
