"""Database URL forms: libpq/asyncpg style (`postgresql://`) and SQLAlchemy's async dialect."""

from __future__ import annotations

from sqlalchemy.engine import make_url


def sqlalchemy_async_url(url: str) -> str:
    """`postgresql://...` (or `postgres://`, `postgresql+psycopg://`) → `postgresql+asyncpg://`."""
    parsed = make_url(url.replace("postgres://", "postgresql://", 1))
    return parsed.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)


def asyncpg_dsn(url: str) -> str:
    """A DSN asyncpg accepts: the driver suffix stripped."""
    parsed = make_url(url.replace("postgres://", "postgresql://", 1))
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)
