"""The hourly rollup's indexes as stored: on the rollup table, or on the continuous aggregate's
materialization hypertable (where TimescaleDB puts an index created on the aggregate)."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from service.db.rollups import HOURLY

# The relation that holds the hourly rows: the table itself, or the aggregate's hypertable.
STORAGE = f"""
SELECT coalesce(
    (SELECT format('%I.%I', materialization_hypertable_schema, materialization_hypertable_name)
     FROM timescaledb_information.continuous_aggregates WHERE view_name = '{HOURLY.name}'),
    '{HOURLY.name}')
"""
STORAGE_PG = f"SELECT '{HOURLY.name}'"

_INDEXES = """
SELECT x.relname AS name, i.indisprimary AS primary_key, i.indnkeyatts AS nkeys,
       array(SELECT pg_get_indexdef(i.indexrelid, k, false) FROM generate_series(1, i.indnatts) k)
           AS columns
FROM pg_index i JOIN pg_class x ON x.oid = i.indexrelid
WHERE i.indrelid = $1::regclass
ORDER BY 1
"""


@dataclass(frozen=True, slots=True)
class StoredIndex:
    name: str
    primary_key: bool
    key: tuple[str, ...]
    included: tuple[str, ...]


async def storage(conn: asyncpg.Connection, mode: str) -> str:
    return await conn.fetchval(STORAGE if mode == "timescale" else STORAGE_PG)


async def hourly_indexes(conn: asyncpg.Connection, mode: str) -> list[StoredIndex]:
    rows = await conn.fetch(_INDEXES, await storage(conn, mode))
    return [
        StoredIndex(
            r["name"], r["primary_key"], tuple(r["columns"][: r["nkeys"]]), tuple(r["columns"][r["nkeys"] :])
        )
        for r in rows
    ]


async def device_indexes(conn: asyncpg.Connection, mode: str) -> list[StoredIndex]:
    """The indexes led by device_id (the device-history read's)."""
    return [ix for ix in await hourly_indexes(conn, mode) if ix.key[:1] == ("device_id",)]
