"""Head as the live code would build it today: the models' tables and the service's DDL modules.

The revisions run frozen copies of their DDL (`alembic/revision_ddl`), so a change to
`service/db/time_series.py`, `service/db/rollups.py`, `service/db/compression.py`,
`service/rollout/counts.py` or the models does not reach a database until a new revision
carries it. Building head from the live code and comparing its catalogue with a migrated head
(`test_revisions_stand_alone.py`) catches a live change that has no revision yet.

The steps mirror what the revisions add up to; a revision that adds a new kind of object adds
its live counterpart here (the test fails until it does).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import asyncpg
from sqlalchemy import MetaData, pool
from sqlalchemy.ext.asyncio import create_async_engine

from service.db import compression, models, rollups
from service.db import time_series as ts
from service.db.urls import sqlalchemy_async_url
from service.retention import audit
from service.rollout import counts
from service.settings import Settings, StorageMode

# Sequences that no model declares (ids drawn by statements: `nextval('fcm_dispatches_id_seq')`).
_SEQUENCES = ("fcm_dispatches_id_seq", "apk_download_events_id_seq", "events_id_seq")


def _tables(mode: StorageMode) -> MetaData:
    """The models' tables that `create_all` makes: not the rollups (their DDL module builds
    them), the time-series ones partitioned by range in postgres mode."""
    metadata = MetaData(naming_convention=models.Base.metadata.naming_convention)
    for table in models.Base.metadata.sorted_tables:
        if table.info.get("rollup"):
            continue
        copy = table.to_metadata(metadata)
        if mode == "postgres" and table.name in ts.BY_NAME:
            copy.dialect_kwargs["postgresql_partition_by"] = ts.postgres_partition_by(ts.BY_NAME[table.name])
    return metadata


async def build(url: str, mode: StorageMode, settings: Settings, stamp: Callable[[str], None]) -> None:
    """Build head on the empty database at `url` from the live code; `stamp()` then records
    the head revision (the caller's `Migrator.stamp`)."""
    conn = await asyncpg.connect(url)
    try:

        async def run(statements: list[str]) -> None:
            for sql in statements:
                await conn.execute(sql)

        first: list[str] = []
        if mode == "timescale":
            ts.create_extension(first.append)
        else:
            ts.create_partition_functions(first.append)
        first += [f"CREATE SEQUENCE {name} AS bigint" for name in _SEQUENCES]
        await run(first)

        engine = create_async_engine(sqlalchemy_async_url(url), poolclass=pool.NullPool)
        try:
            async with engine.begin() as sa_conn:
                await sa_conn.run_sync(_tables(mode).create_all)
        finally:
            await engine.dispose()

        windows = settings.retention.as_dict()
        later: list[str] = []
        for table in ts.TIME_SERIES_TABLES:
            ts.after_create(later.append, mode, table, windows[table.name], settings.partition_lookahead)
        later += [audit.store_window_sql(table, windows[table.name]) for table in audit.AUDIT_TABLES]
        ts.create_dispatch_key_expiry(later.append, mode)
        license_ = await conn.fetchval(rollups.LICENSE_SQL) if mode == "timescale" else None
        mechanism = rollups.mechanism_for(mode, license_)
        if mechanism == "rollup_table" and mode == "timescale":
            ts.create_partition_functions(later.append)
        rollups.create_rollups(later.append, mechanism, windows, settings.partition_lookahead)
        if mechanism == "continuous_aggregate":
            compression.enable_compression(later.append, settings.compress_after)
        later += list(counts.INSTALLATION_TRIGGERS)
        await run(later)
    finally:
        await conn.close()
    await asyncio.to_thread(stamp, "head")
