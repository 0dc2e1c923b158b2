"""What a failed command tells its user: one line and an exit code, for every failure a user can cause.

`explain(exc, url)` walks the exception and everything it wraps (`__cause__`, `__context__`,
SQLAlchemy's `.orig`) and answers with the first cause it recognises:

* exit 2, usage and configuration, which only a change of configuration fixes: malformed
  `DATABASE_URL`, wrong password, unknown database or role, a storage mode forced against the
  server, a setting or argument the command refuses;
* exit 1, everything else: database unreachable (refused, DNS, timeout), permission denied,
  schema behind head, data directory not writable, any other database error.

The line says what failed and what to do, and names the database with its password masked.
The password itself never appears, even when a driver message would repeat it.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterator
from dataclasses import dataclass

import asyncpg

from service.db.urls import mask_url, url_password

USAGE = 2
FAILURE = 1


@dataclass(frozen=True, slots=True)
class Explanation:
    code: int
    message: str


def causes(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and what it wraps, outermost first, each once."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        for inner in (getattr(current, "orig", None), current.__cause__, current.__context__):
            if isinstance(inner, BaseException):
                todo.append(inner)
        if isinstance(current, BaseExceptionGroup):
            todo.extend(current.exceptions)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _explain_one(exc: BaseException, db: str, url: str | None) -> Explanation | None:
    from alembic.util.exc import CommandError
    from sqlalchemy.exc import ArgumentError

    from service.db.embedded import EmbeddedPostgresError
    from service.db.preflight import SchemaBehindError
    from service.db.storage_mode import StorageModeError
    from service.migrations.backup import BackupError
    from service.migrations.migrator import MigrationError
    from service.retention.policies import SchemaNotReadyError
    from service.settings import SettingsError

    match exc:
        case SettingsError():
            return Explanation(USAGE, f"configuration error: {exc}")
        case ArgumentError() | MalformedUrlError():
            return Explanation(
                USAGE,
                f"DATABASE_URL is not a PostgreSQL URL ({mask_url(url)}); "
                "use postgresql://USER:PASSWORD@HOST:PORT/DATABASE",
            )
        case asyncpg.InvalidPasswordError():
            return Explanation(
                USAGE, f"password authentication failed at {db}; fix the password in DATABASE_URL"
            )
        case asyncpg.InvalidCatalogNameError():
            return Explanation(
                USAGE,
                f"{_first_line(exc)} at {db}; create it (createdb) or fix the database name in DATABASE_URL",
            )
        case asyncpg.InvalidAuthorizationSpecificationError():
            return Explanation(
                USAGE,
                f"{_first_line(exc)} at {db}; create the role (createuser) or fix the user in DATABASE_URL",
            )
        case StorageModeError():
            return Explanation(
                USAGE,
                f"{exc} at {db}; set TELEMETRY_STORAGE_MODE to a mode this database supports "
                "(auto detects it)",
            )
        case asyncpg.InsufficientPrivilegeError():
            return Explanation(
                FAILURE,
                f"permission denied at {db} ({_first_line(exc)}); run it as the schema's owner "
                "or grant the role CREATE and USAGE on the schema and ownership of its tables",
            )
        case SchemaBehindError() | SchemaNotReadyError():
            return Explanation(FAILURE, f"{exc} at {db}; run `telemetry migrate upgrade` first")
        case asyncpg.UndefinedTableError():
            return Explanation(
                FAILURE, f"the database at {db} has no schema yet; run `telemetry migrate upgrade` first"
            )
        case socket.gaierror():
            return Explanation(
                FAILURE,
                f"database host not found ({exc.strerror or exc}) for {db}; fix the host in DATABASE_URL",
            )
        case TimeoutError():
            return Explanation(
                FAILURE,
                f"database at {db} did not answer in time; check that it is up and reachable "
                "(TELEMETRY_DB_CONNECT_TIMEOUT_SECONDS sets the limit)",
            )
        case ConnectionRefusedError() | asyncpg.CannotConnectNowError():
            return Explanation(
                FAILURE, f"database at {db} is unreachable ({_first_line(exc)}); start it or fix DATABASE_URL"
            )
        case BackupError():
            return Explanation(FAILURE, str(exc))
        case EmbeddedPostgresError():
            return Explanation(FAILURE, f"embedded PostgreSQL: {exc}")
        case PermissionError() | NotADirectoryError() | FileExistsError() if url is None:
            where = exc.filename or "the data directory"
            return Explanation(
                FAILURE,
                f"cannot write {where} ({exc.strerror}); make TELEMETRY_DATA_DIR a writable "
                "directory, or set DATABASE_URL",
            )
        case OSError() if exc.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH) or (
            "Connect call failed" in str(exc)
        ):
            return Explanation(
                FAILURE, f"database at {db} is unreachable ({_first_line(exc)}); start it or fix DATABASE_URL"
            )
        case MigrationError() | CommandError():
            return Explanation(USAGE, _first_line(exc))
        case asyncpg.PostgresError():
            return Explanation(FAILURE, f"database error at {db}: {_first_line(exc)}")
        case OSError() if url is None:
            return Explanation(FAILURE, f"{_first_line(exc)}; check TELEMETRY_DATA_DIR or set DATABASE_URL")
        case OSError() | asyncpg.InterfaceError():
            return Explanation(FAILURE, f"database at {db}: {_first_line(exc)}")
        case ValueError():
            return Explanation(USAGE, _first_line(exc))
    return None


class MalformedUrlError(ValueError):
    """`DATABASE_URL` is not a PostgreSQL URL."""


def check_url(url: str | None) -> None:
    """Raise `MalformedUrlError` unless `url` (when set) parses as a PostgreSQL URL with a host."""
    if not url:
        return
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url.replace("postgres://", "postgresql://", 1))
        parsed.port  # noqa: B018 -- parsing the port is what may fail
    except Exception as exc:
        raise MalformedUrlError(str(exc)) from None
    if parsed.get_backend_name() != "postgresql":
        raise MalformedUrlError(f"scheme {parsed.drivername!r}")


def explain(exc: BaseException, url: str | None) -> Explanation:
    """One line (without the `telemetry <group>:` prefix) and an exit code for `exc`."""
    db = mask_url(url) if url else "the embedded PostgreSQL"
    found: Explanation | None = None
    for cause in causes(exc):
        found = _explain_one(cause, db, url)
        if found is not None:
            break
    if found is None:
        found = Explanation(
            FAILURE,
            f"unexpected error: {type(exc).__name__}: {_first_line(exc)} "
            "(TELEMETRY_LOG_LEVEL=DEBUG shows the traceback)",
        )
    message = " ".join(found.message.split())
    password = url_password(url)
    if password and len(password) > 2:
        message = message.replace(password, "***")
    return Explanation(found.code, message)
