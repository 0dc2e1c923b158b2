"""The registry of retained tables is the one list: every window setting, every rollup, every
kind's own tuple and every `retention_policies` row the migrations write come from it."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import asyncpg

from service.db import retained
from service.db.retained import RETAINED_TABLES, RetentionKind, of_kind
from service.db.rollups import ROLLUPS
from service.db.time_series import TIME_SERIES_TABLES
from service.retention.audit import AUDIT_TABLES
from service.retention.health import assess
from service.retention.in_force import WindowsInForce
from service.retention.policies import SETTABLE
from service.retention.rollup_show import collect_rollups
from service.retention.show import collect, collect_audit
from service.settings import RETENTION_VARIABLES, RetentionWindows, Settings, StorageMode

ROOT = Path(__file__).resolve().parents[2]


def test_every_window_setting_is_one_registry_entry_and_back() -> None:
    names = [t.name for t in RETAINED_TABLES]
    assert len(names) == len(set(names))
    assert set(names) == {f.name for f in dataclasses.fields(RetentionWindows)} == set(RETENTION_VARIABLES)


def test_each_entry_says_its_kind_time_column_default_window_and_setting() -> None:
    defaults = RetentionWindows()
    for table in RETAINED_TABLES:
        assert isinstance(table.kind, RetentionKind)
        assert re.fullmatch(r"[a-z_]+", table.time_column), table
        assert table.default_window == getattr(defaults, table.name)
        assert table.setting.startswith("TELEMETRY_RETENTION_") and table.setting.endswith("_SECONDS")
        # A plain table has no ranges; every other kind is dropped by whole ranges.
        assert (table.interval is None) == (table.kind is RetentionKind.ROW_EXPIRY), table


def test_a_window_setting_seeds_its_tables_default() -> None:
    env = {t.setting: str(3600 * (i + 30)) for i, t in enumerate(RETAINED_TABLES)}
    settings = Settings.from_env(env)
    for i, table in enumerate(RETAINED_TABLES):
        assert getattr(settings.retention, table.name).total_seconds() == 3600 * (i + 30)


def test_the_kinds_tuples_are_the_registry_filtered() -> None:
    assert TIME_SERIES_TABLES == of_kind(RetentionKind.TIME_SERIES)
    assert tuple(r.table for r in ROLLUPS) == of_kind(RetentionKind.ROLLUP)
    assert AUDIT_TABLES == of_kind(RetentionKind.ROW_EXPIRY)
    assert set(SETTABLE) == set(TIME_SERIES_TABLES) | set(AUDIT_TABLES)
    assert retained.BY_NAME["events"] is retained.EVENTS


def test_no_other_module_writes_retention_policies_at_run_time() -> None:
    # The migrations write through `time_series.store_window_sql`; at run time only
    # `retention/policies.py` writes the table (the revisions' own SQL is theirs).
    writers = []
    for path in (ROOT / "service").rglob("*.py"):
        text = path.read_text()
        if re.search(r"(INSERT INTO|UPDATE|DELETE FROM) retention_policies", text):
            writers.append(path.relative_to(ROOT).as_posix())
    assert sorted(writers) == ["service/db/time_series.py", "service/retention/policies.py"]


async def test_the_migrations_store_one_row_per_registry_entry(conn: asyncpg.Connection) -> None:
    rows = {r["table_name"]: r for r in await conn.fetch("SELECT * FROM retention_policies")}
    assert set(rows) == {t.name for t in RETAINED_TABLES}
    for table in RETAINED_TABLES:
        assert rows[table.name]["drop_after"] == table.default_window, table.name
        assert rows[table.name]["partition_interval"] == table.interval, table.name


async def test_show_check_and_the_windows_in_force_cover_every_registry_entry(
    conn: asyncpg.Connection, pool: asyncpg.Pool, mode: StorageMode
) -> None:
    settings = Settings(storage_mode=mode)
    tables, _keys = await collect(conn, mode, settings)
    audits = await collect_audit(conn, settings)
    rollups = await collect_rollups(conn, mode)
    shown = [s.table for s in tables] + [a.table for a in audits] + [r.name for r in rollups]
    assert sorted(shown) == sorted(t.name for t in RETAINED_TABLES)
    health = await assess(conn, mode, settings)
    assert set(health.max_age) == {t.name for t in SETTABLE}
    assert set(health.rollup_lag) == {r.name for r in ROLLUPS}
    windows = WindowsInForce(pool, settings.retention)
    assert await windows.refresh()
    assert {t.name: windows.window(t.name) for t in RETAINED_TABLES} == {
        t.name: t.default_window for t in RETAINED_TABLES
    }
