"""`migrate check`, second half: the database's functions, procedures and triggers against the
service's modules that define them.

Autogenerate compares tables with the models; the routines the migrations built have no model.
Revisions run frozen copies of their DDL (`alembic/revision_ddl`), so a routine whose stored
body differs from what its live module (`service.db.time_series`, `service.rollout.counts`)
would create means the module was edited without a revision carrying the change: until one
does, the service runs SQL nobody reviewed as a migration, or a new database and an old one
differ.

Guarantees: read-only (catalogue queries only; the live DDL is rendered, never executed).
Compared: each function's and procedure's body (`prosrc`, the text between its dollar quotes)
and each trigger's definition (whitespace and the schema name aside); a routine or trigger that
either side lacks is reported too. Not compared: retention, refresh and compression policies,
whose windows are configuration (`telemetry retention set` changes them at run time;
`telemetry retention check` verifies them), and everything the models cover.
"""

from __future__ import annotations

import re

import asyncpg

from service.db import rollups
from service.db import time_series as ts
from service.rollout import counts
from service.settings import StorageMode

_ROUTINE = re.compile(
    r"CREATE OR REPLACE (FUNCTION|PROCEDURE) (\w+)\(.*?\$(\w*)\$(.*)\$\3\$", re.DOTALL | re.IGNORECASE
)
_TRIGGER = re.compile(r"CREATE TRIGGER (\w+)\s", re.IGNORECASE)

_STORED_ROUTINES = """
SELECT CASE p.prokind WHEN 'p' THEN 'procedure' ELSE 'function' END AS kind, p.proname, p.prosrc
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname = current_schema() AND p.prokind IN ('f', 'p')
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = p.oid AND d.deptype = 'e')
"""

# Triggers on the default schema's tables, less TimescaleDB's own (on hypertables).
_STORED_TRIGGERS = """
SELECT t.tgname, pg_get_triggerdef(t.oid) AS definition
FROM pg_trigger t
JOIN pg_class c ON c.oid = t.tgrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_proc p ON p.oid = t.tgfoid
JOIN pg_namespace pn ON pn.oid = p.pronamespace
WHERE n.nspname = current_schema() AND NOT t.tgisinternal AND pn.nspname = current_schema()
"""

Definitions = dict[tuple[str, str], str]


def _normalized(sql: str) -> str:
    return " ".join(sql.replace(" public.", " ").split())


def expected(mode: StorageMode, mechanism: rollups.RollupMechanism) -> Definitions:
    """What the live modules would create in a database of `mode` built with `mechanism`."""
    statements: list[str] = []
    if mode == "postgres" or mechanism == "rollup_table":
        ts.create_partition_functions(statements.append)
    ts.create_dispatch_key_expiry(statements.append, mode)
    statements += counts.INSTALLATION_TRIGGERS
    out: Definitions = {}
    for sql in statements:
        if routine := _ROUTINE.search(sql):
            out[(routine[1].lower(), routine[2])] = routine[4]
        elif trigger := _TRIGGER.search(sql):
            out[("trigger", trigger[1])] = _normalized(sql)
    return out


async def stored(conn: asyncpg.Connection) -> Definitions:
    """The project's functions, procedures and triggers in `conn`'s database."""
    out: Definitions = {}
    for r in await conn.fetch(_STORED_ROUTINES):
        out[(r["kind"], r["proname"])] = r["prosrc"]
    for r in await conn.fetch(_STORED_TRIGGERS):
        out[("trigger", r["tgname"])] = _normalized(r["definition"])
    return out


def drift(want: Definitions, have: Definitions) -> list[str]:
    """One line per routine or trigger that differs, is missing, or should not be there."""
    out = []
    for kind, name in sorted(set(want) | set(have)):
        if (kind, name) not in have:
            out.append(f"{kind} {name}: missing from the database")
        elif (kind, name) not in want:
            out.append(f"{kind} {name}: in the database, defined by no module")
        elif want[(kind, name)] != have[(kind, name)]:
            out.append(f"{kind} {name}: differs from its definition in the service's modules")
    return out


async def check(conn: asyncpg.Connection, mode: StorageMode) -> list[str]:
    """`drift` between `conn`'s database (built in `mode`) and the live modules."""
    mechanism = await conn.fetchval(rollups.BUILT_MECHANISM_SQL)
    return drift(expected(mode, mechanism), await stored(conn))
