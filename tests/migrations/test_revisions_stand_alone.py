"""Revisions stand alone: what each one builds depends on nothing that changes after it.

* No revision imports the service: it holds its DDL or calls `alembic/revision_ddl`, whose
  modules are frozen (their code is pinned below).
* Head built in one run, head reached one revision at a time, and head as the live models and
  `service/db` modules build it have the same catalogue: tables, columns, constraints (check
  constraints too), indexes, functions, procedures, triggers, and in timescale mode the
  hypertables, continuous aggregates, compression settings and every job with its config.
* Every downgrade returns the catalogue its target revision had on the way up.
"""

from __future__ import annotations

import ast
import asyncio
import hashlib
from pathlib import Path

import asyncpg

from service.migrations.migrator import Migrator
from service.settings import Settings
from tests.migrations import live_schema
from tests.migrations.catalogue import differences, snapshot
from tests.support.cluster import TestServer, create_database, migrate, migrator_for, settings_for

ALEMBIC = Path(__file__).resolve().parents[2] / "alembic"
REVISIONS = sorted((ALEMBIC / "versions").glob("*.py"))
FROZEN = ALEMBIC / "revision_ddl"

# The code of each frozen module (its AST without docstrings: comments and docstrings may be
# corrected, code may not). A module a revision imports is never changed: a helper that must
# emit other SQL goes into a new module, which gets its line here.
FROZEN_CODE = {
    "__init__.py": "3543b4693a36a109",
    "inputs.py": "da09ec65711bebd5",
    "time_series_v1.py": "8853ad64caf1a6e4",
    "rollups_v1.py": "8b1322a1b400a92d",
    "hourly_covering_v1.py": "c1e3e5ef7968ca2d",
    "compression_v1.py": "be5f48dade9fa42b",
}


def _code_digest(path: Path) -> str:
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(body, list)
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            body.pop(0)
    return hashlib.sha256(ast.dump(tree).encode()).hexdigest()[:16]


def _imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_no_revision_and_no_frozen_helper_imports_the_service() -> None:
    assert REVISIONS
    for path in [*REVISIONS, *FROZEN.glob("*.py")]:
        service = {m for m in _imported_modules(path) if m == "service" or m.startswith("service.")}
        assert not service, f"{path.relative_to(ALEMBIC)} imports {sorted(service)}"


def test_frozen_ddl_modules_are_unchanged() -> None:
    found = {path.name: _code_digest(path) for path in sorted(FROZEN.glob("*.py"))}
    assert found == FROZEN_CODE, (
        "alembic/revision_ddl is frozen: put a changed helper in a new module (and pin it here)"
    )


def _revisions_oldest_first() -> list[str]:
    script = Migrator(settings=Settings(), database_url=None).script()
    return [rev.revision for rev in reversed(list(script.walk_revisions("base", "heads")))]


async def _base(pg_server: TestServer, mode: str) -> str:
    """What a downgrade to base leaves: an empty database, with TimescaleDB's extension in
    timescale mode (the baseline creates it if missing, and leaves it: it may predate us)."""
    url = await create_database(pg_server)
    if mode == "timescale":
        conn = await asyncpg.connect(url)
        try:
            await conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
        finally:
            await conn.close()
    return url


async def test_head_in_one_run_equals_head_one_revision_at_a_time_and_every_downgrade_returns_its_target(
    pg_server: TestServer, mode: str
) -> None:
    revisions = _revisions_oldest_first()
    stepwise = await create_database(pg_server)
    on_the_way_up = {"base": await snapshot(await _base(pg_server, mode))}
    for revision in revisions:
        await migrate(stepwise, mode, revision)  # type: ignore[arg-type]
        on_the_way_up[revision] = await snapshot(stepwise)

    at_once = await create_database(pg_server)
    await migrate(at_once, mode)  # type: ignore[arg-type]
    found = differences(await snapshot(at_once), on_the_way_up[revisions[-1]])
    assert not found, "head in one run (left) vs one revision at a time (right):\n" + "\n".join(found)

    downgrade = migrator_for(stepwise, mode).downgrade  # type: ignore[arg-type]
    for target in [*reversed(revisions[:-1]), "base"]:
        await asyncio.to_thread(downgrade, target)
        found = differences(await snapshot(stepwise), on_the_way_up[target])
        assert not found, f"downgraded to {target} (left) vs upgraded to it (right):\n" + "\n".join(found)


async def test_head_matches_what_the_live_models_and_modules_build(pg_server: TestServer, mode: str) -> None:
    migrated = await create_database(pg_server)
    await migrate(migrated, mode)  # type: ignore[arg-type]
    live = await create_database(pg_server)
    live_migrator = migrator_for(live, mode)  # type: ignore[arg-type]
    await live_schema.build(live, mode, settings_for(live, mode), live_migrator.stamp)  # type: ignore[arg-type]
    found = differences(await snapshot(migrated), await snapshot(live))
    assert not found, "migrated head (left) vs the live code's build (right):\n" + "\n".join(found)
    # And `migrate check` finds the live build at head, like the models and the modules.
    assert await asyncio.to_thread(live_migrator.check) == 0, live_migrator.stdout.getvalue()  # type: ignore[attr-defined]


# The naming convention the revisions were written against: Alembic's `op` names a constraint
# or index through the target metadata's convention (the models'), so it is part of what every
# revision runs. Changing it changes old revisions' names: keep it, or rename in a revision.
REVISIONS_NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def test_the_models_naming_convention_is_the_one_the_revisions_were_written_against() -> None:
    from service.db.models import Base

    convention = {k: v for k, v in Base.metadata.naming_convention.items() if isinstance(k, str)}
    assert convention == REVISIONS_NAMING_CONVENTION
