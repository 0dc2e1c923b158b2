"""A database's schema as the catalogue holds it, for comparing two builds of the same revision.

Not only tables: every relation of the default schema with its columns, constraints (check
constraints included, which Alembic's autogenerate does not compare), indexes, views and
sequences; the functions and procedures the project made (not an extension's), triggers; the
`retention_policies` and `rollup_watermarks` rows migrations write; and in timescale mode the
hypertables, their dimensions, continuous aggregates, compression settings and jobs (retention,
refresh, compression and the project's own), with their configuration.

What is left out on purpose, because it differs between two correct builds:
* object ids, and TimescaleDB's numbering of hypertables (`_materialized_hypertable_5`): names
  and configurations that carry a hypertable id are rewritten to the hypertable's name;
* chunks and native partitions (their names and number follow the clock, not the schema);
* column order (a column added by a later revision comes last, a model lists it in place).
"""

from __future__ import annotations

import json
import re
from typing import Any

import asyncpg

Catalogue = dict[str, Any]

# The default schema, less Alembic's own bookkeeping (`alembic_version` is gone only at base).
_PUBLIC = "n.nspname = current_schema() AND c.relname <> 'alembic_version'"
_PUBLIC_ROUTINES = "n.nspname = current_schema()"

_RELATIONS = f"""
SELECT c.relname, c.relkind::text, coalesce(c.reloptions, '{{}}') AS reloptions,
       pg_get_partkeydef(c.oid) AS partition_key
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE {_PUBLIC} AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') AND NOT c.relispartition
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype = 'e')
"""

_COLUMNS = f"""
SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod) AS type, a.attnotnull,
       pg_get_expr(ad.adbin, ad.adrelid) AS default, a.attidentity::text, a.attgenerated::text
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
WHERE {_PUBLIC} AND c.relkind IN ('r', 'p', 'v', 'm') AND NOT c.relispartition
  AND a.attnum > 0 AND NOT a.attisdropped
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype = 'e')
"""

_CONSTRAINTS = f"""
SELECT c.relname, k.conname, k.contype::text, pg_get_constraintdef(k.oid) AS definition
FROM pg_constraint k
JOIN pg_class c ON c.oid = k.conrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE {_PUBLIC} AND NOT c.relispartition
"""

# Indexes of the default schema's tables, and of the continuous aggregates' materialization
# hypertables (where the hourly rollup's covering index lives).
_INDEXES = f"""
SELECT c.relname AS table_name, x.relname AS index_name, pg_get_indexdef(i.indexrelid) AS definition
FROM pg_index i
JOIN pg_class c ON c.oid = i.indrelid
JOIN pg_class x ON x.oid = i.indexrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE ({_PUBLIC} AND NOT c.relispartition)
   OR (n.nspname = '_timescaledb_internal' AND c.relname LIKE '\\_materialized\\_hypertable\\_%')
"""

_VIEWS = f"""
SELECT c.relname, pg_get_viewdef(c.oid) AS definition
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE {_PUBLIC} AND c.relkind IN ('v', 'm')
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype = 'e')
"""

_SEQUENCES = f"""
SELECT c.relname, format_type(s.seqtypid, NULL) AS type, s.seqstart, s.seqincrement, s.seqmax,
       s.seqmin, s.seqcache, s.seqcycle
FROM pg_sequence s
JOIN pg_class c ON c.oid = s.seqrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE {_PUBLIC}
"""

# The project's routines: every function and procedure of the default schema that is not an
# extension's (TimescaleDB installs its API there).
_ROUTINES = f"""
SELECT p.proname, p.prokind::text, pg_get_function_identity_arguments(p.oid) AS arguments,
       pg_get_functiondef(p.oid) AS definition
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE {_PUBLIC_ROUTINES} AND p.prokind IN ('f', 'p')
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = p.oid AND d.deptype = 'e')
"""

_TRIGGERS = f"""
SELECT c.relname, t.tgname, pg_get_triggerdef(t.oid) AS definition, t.tgenabled::text
FROM pg_trigger t
JOIN pg_class c ON c.oid = t.tgrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE {_PUBLIC} AND NOT t.tgisinternal AND NOT c.relispartition
"""

_SCHEMAS = """
SELECT nspname FROM pg_namespace
WHERE nspname NOT LIKE 'pg\\_%' AND nspname <> 'information_schema'
  AND nspname NOT LIKE '\\_timescaledb%' AND nspname NOT LIKE 'timescaledb\\_%'
"""

# --- timescale mode ------------------------------------------------------------------------

_HYPERTABLE_NAMES = """
SELECT h.id, coalesce('materialization of ' || a.user_view_name, h.table_name) AS name
FROM _timescaledb_catalog.hypertable h
LEFT JOIN _timescaledb_catalog.continuous_agg a ON a.mat_hypertable_id = h.id
"""

_HYPERTABLES = """
SELECT hypertable_name, num_dimensions, compression_enabled
FROM timescaledb_information.hypertables WHERE hypertable_schema = current_schema()
"""

_DIMENSIONS = """
SELECT hypertable_schema || '.' || hypertable_name AS hypertable, column_name, dimension_type,
       time_interval::text, integer_interval
FROM timescaledb_information.dimensions
"""

_CONTINUOUS_AGGREGATES = """
SELECT view_name, materialized_only, compression_enabled,
       materialization_hypertable_schema || '.' || materialization_hypertable_name AS materialization
FROM timescaledb_information.continuous_aggregates WHERE view_schema = current_schema()
"""

_COMPRESSION = """
SELECT hypertable::text, segmentby, orderby, compress_interval_length, index::text
FROM timescaledb_information.hypertable_compression_settings
"""

_JOBS = """
SELECT proc_schema, proc_name, hypertable_schema || '.' || hypertable_name AS hypertable,
       schedule_interval::text, max_runtime::text, max_retries, retry_period::text,
       config::text, scheduled, fixed_schedule
FROM timescaledb_information.jobs
"""


_RETENTION_POLICIES = "SELECT table_name, drop_after::text, partition_interval::text FROM retention_policies"
_WATERMARKS = "SELECT rollup FROM rollup_watermarks"


async def _rows_if_table(conn: asyncpg.Connection, table: str, query: str) -> list[dict[str, Any]] | None:
    """The rows a migration wrote into `table`; None before the table exists."""
    if not await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", table):
        return None
    return _rows(await conn.fetch(query))


def _rows(records: list[asyncpg.Record]) -> list[dict[str, Any]]:
    """Records as sorted, JSON-comparable dicts (lists, not arrays; text for other types)."""
    out = [{k: (list(v) if isinstance(v, list | tuple) else v) for k, v in r.items()} for r in records]
    return sorted(out, key=lambda row: json.dumps(row, sort_keys=True, default=str))


async def _timescale_sections(conn: asyncpg.Connection) -> Catalogue:
    return {
        "hypertables": _rows(await conn.fetch(_HYPERTABLES)),
        "dimensions": _rows(await conn.fetch(_DIMENSIONS)),
        "continuous_aggregates": _rows(await conn.fetch(_CONTINUOUS_AGGREGATES)),
        "compression": _rows(await conn.fetch(_COMPRESSION)),
        "jobs": _rows(await conn.fetch(_JOBS)),
    }


def _renumbered(value: Any, names: dict[int, str], materializations: dict[str, str]) -> Any:
    """Hypertable ids and materialization hypertable names replaced by what they stand for."""
    if isinstance(value, dict):
        return {k: _renumbered(v, names, materializations) for k, v in value.items()}
    if isinstance(value, list):
        return [_renumbered(v, names, materializations) for v in value]
    if not isinstance(value, str):
        return value
    for qualified, meaning in materializations.items():
        value = value.replace(qualified, meaning)
    # `_materialized_hypertable_5`, `_partial_view_5`, ... and ids in job configs and triggers.
    value = re.sub(
        r"_(materialized_hypertable|partial_view|direct_view)_(\d+)",
        lambda m: f"_{m[1]}<{names.get(int(m[2]), m[2])}>",
        value,
    )
    value = re.sub(
        r'"(hypertable_id|mat_hypertable_id)": (\d+)',
        lambda m: f'"{m[1]}": "{names.get(int(m[2]), m[2])}"',
        value,
    )
    return re.sub(
        r"(continuous_agg_invalidation_trigger)\('(\d+)'\)",
        lambda m: f"{m[1]}('{names.get(int(m[2]), m[2])}')",
        value,
    )


async def snapshot(url: str) -> Catalogue:
    """The catalogue of the database at `url` (see the module docstring for what is in it)."""
    conn = await asyncpg.connect(url)
    try:
        extensions = sorted(r[0] for r in await conn.fetch("SELECT extname FROM pg_extension"))
        catalogue: Catalogue = {
            "schemas": sorted(r[0] for r in await conn.fetch(_SCHEMAS)),
            "extensions": extensions,
            "relations": _rows(await conn.fetch(_RELATIONS)),
            "columns": _rows(await conn.fetch(_COLUMNS)),
            "constraints": _rows(await conn.fetch(_CONSTRAINTS)),
            "indexes": _rows(await conn.fetch(_INDEXES)),
            "views": _rows(await conn.fetch(_VIEWS)),
            "sequences": _rows(await conn.fetch(_SEQUENCES)),
            "routines": _rows(await conn.fetch(_ROUTINES)),
            "triggers": _rows(await conn.fetch(_TRIGGERS)),
            "retention_policies": await _rows_if_table(conn, "retention_policies", _RETENTION_POLICIES),
            "rollup_watermarks": await _rows_if_table(conn, "rollup_watermarks", _WATERMARKS),
        }
        if "timescaledb" not in extensions:
            return catalogue
        catalogue.update(await _timescale_sections(conn))
        names = {r["id"]: r["name"] for r in await conn.fetch(_HYPERTABLE_NAMES)}
        materializations = {
            r["materialization"]: f"materialization of {r['view_name']}"
            for r in await conn.fetch(_CONTINUOUS_AGGREGATES)
        }
        return _renumbered(catalogue, names, materializations)
    finally:
        await conn.close()


def _dumped(rows: list[Any]) -> set[str]:
    return {json.dumps(row, sort_keys=True, default=str) for row in rows}


def differences(left: Catalogue, right: Catalogue) -> list[str]:
    """What is in one catalogue and not in the other, one line per object, by section."""
    out: list[str] = []
    for section in sorted(set(left) | set(right)):
        a, b = left.get(section), right.get(section)
        if a == b:
            continue
        if not isinstance(a, list) or not isinstance(b, list):
            out.append(f"{section}: {a!r} != {b!r}")
            continue
        only_a, only_b = _dumped(a) - _dumped(b), _dumped(b) - _dumped(a)
        out += [f"{section}: only left:  {row}" for row in sorted(only_a)]
        out += [f"{section}: only right: {row}" for row in sorted(only_b)]
    return out
