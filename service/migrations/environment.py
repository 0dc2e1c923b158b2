"""What `alembic/env.py` runs: online (async, asyncpg) or offline (SQL text) migrations.

Guarantees:
* Online runs take a transaction-scoped PostgreSQL advisory lock before Alembic reads the
  version table, so any number of instances can migrate one database at once: one does the
  work, the others wait and then find the database at head.
* The storage mode is decided once per run (see `service.db.storage_mode`) and handed to the
  revisions in the migration context's options (`storage_mode(op)` reads it back).
* Autogenerate and `check` compare only the default schema's own tables: TimescaleDB's chunks
  and catalogs, and the native partitions kept in their own schema, are not drift.
"""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import Connection, pool, text
from sqlalchemy.ext.asyncio import create_async_engine

from service.db import locks, models
from service.db import storage_mode as storage_modes
from service.db.urls import sqlalchemy_async_url
from service.settings import Settings, StorageMode

_IGNORED_SCHEMAS_PREFIXES = ("_timescaledb", "timescaledb_", "telemetry_partitions")


def include_name(name: str | None, type_: str, parent_names: dict[str, Any]) -> bool:
    if type_ == "schema":
        return name is None or not name.startswith(_IGNORED_SCHEMAS_PREFIXES)
    return True


def include_object_for(continuous_aggregates: frozenset[str]) -> Any:
    """A rollup that is a continuous aggregate here is a view, not the model's table: not drift."""

    def include_object(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
        if type_ == "table" and not reflected and obj.info.get("rollup"):
            return name not in continuous_aggregates
        return True

    return include_object


_CONTINUOUS_AGGREGATES = """
SELECT coalesce(array_agg(view_name::text), '{}') FROM timescaledb_information.continuous_aggregates
WHERE view_schema = current_schema()
"""


def _options(context: Any) -> tuple[Settings, dict[str, Any]]:
    config = context.config
    settings: Settings = config.attributes.get("settings") or Settings.from_env()
    x_args = context.get_x_argument(as_dictionary=True)
    return settings, x_args


def _run_offline(context: Any) -> None:
    settings, x_args = _options(context)
    mode = config_mode = context.config.attributes.get("storage_mode") or x_args.get("mode")
    if config_mode not in ("timescale", "postgres"):
        mode = settings.storage_mode
    if mode not in ("timescale", "postgres"):
        raise SystemExit(
            "offline SQL needs the storage mode: pass --mode timescale|postgres "
            "(or -x mode=... to plain alembic)"
        )
    context.configure(
        url="postgresql://",
        dialect_name="postgresql",
        # "named" keeps '%' literal (pyformat would double it inside PL/pgSQL format() calls).
        dialect_opts={"paramstyle": "named"},
        target_metadata=models.Base.metadata,
        literal_binds=True,
        include_name=include_name,
        storage_mode=mode,
        settings=settings,
    )
    with context.begin_transaction():
        context.execute(f"SELECT pg_advisory_xact_lock({locks.MIGRATION})")
        context.run_migrations()


def _do_run_online(connection: Connection, context: Any, mode: StorageMode) -> None:
    settings, _ = _options(context)
    caggs: frozenset[str] = frozenset()
    if connection.execute(text("SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'")).scalar():
        caggs = frozenset(connection.execute(text(_CONTINUOUS_AGGREGATES)).scalar() or ())
    connection.commit()
    context.configure(
        connection=connection,
        target_metadata=models.Base.metadata,
        include_name=include_name,
        include_object=include_object_for(caggs),
        compare_server_default=False,
        storage_mode=mode,
        settings=settings,
    )
    with context.begin_transaction():
        connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": locks.MIGRATION})
        context.run_migrations()


async def _run_online_async(context: Any, url: str) -> None:
    engine = create_async_engine(sqlalchemy_async_url(url), poolclass=pool.NullPool)
    try:
        async with engine.connect() as connection:
            settings, x_args = _options(context)
            forced = context.config.attributes.get("storage_mode") or x_args.get("mode")
            raw = await connection.get_raw_connection()
            mode = await storage_modes.detect(raw.driver_connection, forced or settings.storage_mode)
            await connection.run_sync(_do_run_online, context, mode)
    finally:
        await engine.dispose()


def run(context: Any) -> None:
    if context.is_offline_mode():
        _run_offline(context)
        return
    settings, _ = _options(context)
    url = context.config.attributes.get("database_url") or settings.database_url
    if not url:
        raise SystemExit(
            "DATABASE_URL is not set: set it, or use `telemetry migrate ...`, which starts the "
            "embedded PostgreSQL when DATABASE_URL is absent"
        )
    asyncio.run(_run_online_async(context, url))


def storage_mode(op: Any) -> StorageMode:
    """The storage mode of this migration run, for revisions."""
    return op.get_context().opts["storage_mode"]


def run_settings(op: Any) -> Settings:
    """The settings of this migration run (retention windows, partition look-ahead)."""
    return op.get_context().opts["settings"]
