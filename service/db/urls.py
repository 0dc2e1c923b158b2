"""Database URL forms: libpq/asyncpg style (`postgresql://`) and SQLAlchemy's async dialect.

SQLAlchemy is imported when a URL is converted, not with this module: the serving process
needs only `asyncpg_dsn`, once at start, and does not otherwise load SQLAlchemy (about 17 MB
of resident memory per process; see `service.serve`).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

_PASSWORD_IN_URL = re.compile(r"(?P<head>://[^/@:]*:)(?P<password>[^@/]*)@")


def mask_url(url: str | None) -> str:
    """`url` with its password replaced by `***` (works on URLs too malformed to parse)."""
    if not url:
        return "(no URL)"
    return _PASSWORD_IN_URL.sub(lambda m: f"{m['head']}***@", url)


def url_password(url: str | None) -> str | None:
    match = _PASSWORD_IN_URL.search(url or "")
    return match["password"] if match and match["password"] else None


def _parse(url: str) -> URL:
    from sqlalchemy.engine import make_url

    return make_url(url.replace("postgres://", "postgresql://", 1))


def sqlalchemy_async_url(url: str) -> str:
    """`postgresql://...` (or `postgres://`, `postgresql+psycopg://`) → `postgresql+asyncpg://`."""
    return _parse(url).set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)


def asyncpg_dsn(url: str) -> str:
    """A DSN asyncpg accepts: the driver suffix stripped."""
    return _parse(url).set(drivername="postgresql").render_as_string(hide_password=False)
