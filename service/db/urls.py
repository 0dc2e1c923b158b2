"""Database URL forms: libpq/asyncpg style (`postgresql://`) and SQLAlchemy's async dialect.

SQLAlchemy is imported when a URL is converted, not with this module: the serving process
needs only `asyncpg_dsn`, once at start, and does not otherwise load SQLAlchemy (about 17 MB
of resident memory per process; see `service.serve`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlalchemy.engine import URL


def _parse(url: str) -> URL:
    from sqlalchemy.engine import make_url

    return make_url(url.replace("postgres://", "postgresql://", 1))


def sqlalchemy_async_url(url: str) -> str:
    """`postgresql://...` (or `postgres://`, `postgresql+psycopg://`) → `postgresql+asyncpg://`."""
    return _parse(url).set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)


def asyncpg_dsn(url: str) -> str:
    """A DSN asyncpg accepts: the driver suffix stripped."""
    return _parse(url).set(drivername="postgresql").render_as_string(hide_password=False)
