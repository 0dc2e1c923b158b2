"""Audit tables (enrollment_events, commands): a window each, expired by batched DELETE in
both modes, by the maintenance task and by `telemetry retention run`."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from datetime import timedelta

import asyncpg

from service.retention import audit
from service.retention.maintenance import Maintenance
from service.settings import Settings, StorageMode


async def _insert_events(conn: asyncpg.Connection, ages: list[timedelta]) -> None:
    for age in ages:
        await conn.execute(
            "INSERT INTO enrollment_events (outcome, remote_addr, created_at)"
            " VALUES ('enrolled', 'a', now() - $1::interval)",
            age,
        )


def _telemetry(db_url: str, mode: StorageMode, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": db_url, "TELEMETRY_STORAGE_MODE": mode}
    return subprocess.run(
        [sys.executable, "-m", "service", *args], env=env, capture_output=True, text=True, timeout=120
    )


async def test_the_migrations_store_a_90_day_window_for_each_audit_table(conn: asyncpg.Connection) -> None:
    rows = await conn.fetch(
        "SELECT table_name, drop_after, partition_interval FROM retention_policies"
        " WHERE table_name IN ('device_events', 'enrollment_events', 'commands') ORDER BY table_name"
    )
    # device_events is no more: it became the event log (a time-series table).
    assert [(r["table_name"], r["drop_after"], r["partition_interval"]) for r in rows] == [
        ("commands", timedelta(days=90), None),
        ("enrollment_events", timedelta(days=90), None),
    ]


async def test_expire_deletes_only_rows_past_the_window_in_bounded_batches(conn: asyncpg.Connection) -> None:
    await _insert_events(conn, [timedelta(days=91)] * 5 + [timedelta(days=89), timedelta(0)])
    partial = await audit.expire(conn, audit.ENROLLMENT_EVENTS, batch_size=2, max_batches=1)
    assert (partial.deleted, partial.complete, partial.error) == (2, False, None)
    dry = await audit.expire(conn, audit.ENROLLMENT_EVENTS, dry_run=True)
    assert (dry.deleted, dry.dry_run) == (3, True)
    assert await conn.fetchval("SELECT count(*) FROM enrollment_events") == 5
    rest = await audit.expire(conn, audit.ENROLLMENT_EVENTS, batch_size=2)
    assert (rest.deleted, rest.complete) == (3, True)
    ages = await conn.fetch("SELECT now() - created_at AS age FROM enrollment_events ORDER BY age")
    assert [r["age"] < timedelta(days=90) for r in ages] == [True, True]


async def test_maintenance_expires_audit_rows_in_both_modes(
    db_url: str, conn: asyncpg.Connection, mode: StorageMode
) -> None:
    await _insert_events(conn, [timedelta(days=100), timedelta(days=1)])
    pool = await asyncpg.create_pool(db_url, min_size=1, max_size=2)
    try:
        report = await Maintenance(pool, Settings(storage_mode=mode)).run_once()
    finally:
        await pool.close()
    assert report.ran and report.errors == ()
    assert report.audit_expired == {
        "enrollment_events": 1,
        "commands": 0,
        "command_pushes": 0,
        "bulk_dispatches": 0,
        "operator_audit": 0,
    }
    assert await conn.fetchval("SELECT count(*) FROM enrollment_events") == 1


async def test_retention_set_show_and_run_cover_the_audit_tables(
    db_url: str, conn: asyncpg.Connection, mode: StorageMode
) -> None:
    await _insert_events(conn, [timedelta(days=40), timedelta(days=10)])
    set_ = await asyncio.to_thread(_telemetry, db_url, mode, "retention", "set", "enrollment_events", "30d")
    assert set_.returncode == 0, set_.stderr
    assert "enrollment_events: window 30d (was 90d)" in set_.stdout
    show = await asyncio.to_thread(_telemetry, db_url, mode, "retention", "show")
    assert show.returncode == 0, show.stderr
    block = show.stdout.split("enrollment_events\n", 1)[1]
    assert "window" in block and "30d" in block.split("\n\n")[0]
    assert "commands" in show.stdout
    run = await asyncio.to_thread(_telemetry, db_url, mode, "retention", "run", "enrollment_events")
    assert run.returncode == 0, run.stderr
    assert "enrollment_events: deleted 1 rows" in run.stdout
    assert await conn.fetchval("SELECT count(*) FROM enrollment_events") == 1


async def test_retention_set_refuses_an_unknown_table_naming_the_audit_tables(
    db_url: str, mode: StorageMode
) -> None:
    result = await asyncio.to_thread(_telemetry, db_url, mode, "retention", "set", "users", "30d")
    assert result.returncode == 2
    assert "commands" in result.stderr and "enrollment_events" in result.stderr and "events" in result.stderr
    assert "Traceback" not in result.stderr
