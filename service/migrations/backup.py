"""`--backup FILE`: a `pg_dump` in custom format before the schema changes, and how to restore it.

Guarantees: `write_backup` returns only once `pg_dump` has written the whole file (exit 0);
otherwise it raises `BackupError` and the caller migrates nothing. The password never appears
on a command line (it goes to `pg_dump` in `PGPASSWORD`), nor in the restore command printed.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

from sqlalchemy.engine import make_url

from service.db.embedded import find_bindir
from service.db.urls import mask_url


class BackupError(RuntimeError):
    """The backup could not be written; nothing was migrated."""


def _libpq_url(url: str) -> tuple[str, str | None]:
    parsed = make_url(url.replace("postgres://", "postgresql://", 1)).set(drivername="postgresql")
    return parsed.set(password=None).render_as_string(hide_password=False), parsed.password


def pg_tool(name: str) -> Path:
    """`pg_dump` or `pg_restore` from the directory that holds the server's `initdb`."""
    return find_bindir() / name


def write_backup(url: str, path: Path) -> None:
    dsn, password = _libpq_url(url)
    env = dict(os.environ)  # the child's environment, not a setting: pg_dump reads PG* itself
    if password:
        env["PGPASSWORD"] = password
    try:
        result = subprocess.run(
            [str(pg_tool("pg_dump")), "--format=custom", f"--file={path}", f"--dbname={dsn}"],
            capture_output=True,
            text=True,
            env=env,
        )
    except OSError as exc:
        raise BackupError(f"backup to {path} failed: cannot run pg_dump ({exc.strerror})") from None
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines() or [f"exit code {result.returncode}"]
        raise BackupError(f"backup to {path} failed: {lines[-1]}; nothing was migrated")


def restore_command(url: str, path: Path) -> str:
    """The command that puts the backup back (password masked: supply it, e.g. in PGPASSWORD)."""
    dsn, _ = _libpq_url(url)
    return shlex.join(
        [
            str(pg_tool("pg_restore")),
            "--clean",
            "--if-exists",
            "--single-transaction",
            f"--dbname={mask_url(dsn)}",
            str(path),
        ]
    )
