"""Commands over time: expired by the maintenance step after the TTL (clock injected), kept far
longer than their dispatch rows, and in `retention show|set|run` like the audit tables."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import timedelta

import asyncpg

from service.app import create_pool, row_merges
from service.commands.acks import AckRow
from service.commands.dispatches import DispatchRow
from service.commands.expiry import expire_commands
from service.db.time_series import DISPATCHES
from service.ingest.writer import GroupCommitWriter
from service.metrics import Metrics
from service.retention.cleanup import clean_table
from service.retention.maintenance import Maintenance
from service.settings import Settings, StorageMode
from tests.retention.history import cover, server_now
from tests.retention.test_audit import _telemetry
from tests.support.cluster import settings_for


async def dispatch_at(
    db_url: str, mode: StorageMode, rows: Sequence[DispatchRow], acks: Sequence[AckRow] = ()
) -> None:
    pool = await create_pool(db_url, settings_for(db_url, mode))
    writer = GroupCommitWriter(pool, Metrics(), row_merges())
    await writer.start()
    try:
        await writer.submit(rows)
        if acks:
            await writer.submit(acks)
    finally:
        await writer.stop()
        await pool.close()


async def statuses(conn: asyncpg.Connection) -> dict[str, str]:
    return {r[0]: r[1] for r in await conn.fetch("SELECT request_id, status FROM commands")}


async def test_expiry_marks_only_open_commands_past_the_ttl_by_the_injected_clock(
    quiet: asyncpg.Connection, db_url: str, mode: StorageMode
) -> None:
    now = await server_now(quiet)
    rows = [DispatchRow(rid, "dev", "lock", None, now, None) for rid in ("open", "half", "done", "broke")]
    acks = [
        AckRow("half", "dev", "delivered", None, None, None),
        AckRow("done", "dev", "executed", None, None, None),
        AckRow("broke", "dev", "failed", None, None, "x"),
    ]
    await dispatch_at(db_url, mode, rows, acks)
    ttl = timedelta(days=1)
    # Just before the TTL: nothing goes.
    before = await expire_commands(quiet, ttl, now=now + ttl - timedelta(seconds=1))
    assert before.expired == 0
    later = now + ttl + timedelta(seconds=1)
    pool = await asyncpg.create_pool(db_url, min_size=1, max_size=2)
    try:
        maintenance = Maintenance(pool, Settings(storage_mode=mode), mode, clock=lambda: later)
        report = await maintenance.run_once()
    finally:
        await pool.close()
    assert report.ran and report.errors == () and report.commands_expired == 2
    assert await statuses(quiet) == {
        "open": "expired",
        "half": "expired",
        "done": "executed",
        "broke": "failed",
    }
    expired_at = await quiet.fetch("SELECT expired_at FROM commands WHERE status = 'expired'")
    assert [r[0] for r in expired_at] == [later, later]
    # A second run later finds nothing left open.
    again = await expire_commands(quiet, ttl, now=later + ttl)
    assert again.expired == 0


async def test_expiry_works_in_bounded_batches(
    quiet: asyncpg.Connection, db_url: str, mode: StorageMode
) -> None:
    now = await server_now(quiet)
    await dispatch_at(db_url, mode, [DispatchRow(f"r{i}", "dev", "lock", None, now, None) for i in range(25)])
    first = await expire_commands(
        quiet, timedelta(hours=1), now=now + timedelta(days=1), batch_size=10, max_batches=2
    )
    assert (first.expired, first.complete) == (20, False)
    rest = await expire_commands(quiet, timedelta(hours=1), now=now + timedelta(days=1), batch_size=10)
    assert (rest.expired, rest.complete) == (5, True)


async def test_a_command_outlives_its_dispatch_row_after_retention(
    quiet: asyncpg.Connection, db_url: str, mode: StorageMode
) -> None:
    now = await server_now(quiet)
    old = now - timedelta(days=3)
    await cover(quiet, mode, DISPATCHES, old - timedelta(days=1), now)
    await dispatch_at(db_url, mode, [DispatchRow("old-cmd", "dev", "wipe", {"k": 1}, old, None)])
    assert await quiet.fetchval("SELECT count(*) FROM fcm_dispatches") == 1

    result = await clean_table(quiet, mode, DISPATCHES)

    assert result.error is None
    assert await quiet.fetchval("SELECT count(*) FROM fcm_dispatches") == 0
    row = await quiet.fetchrow(
        "SELECT status, command, payload, created_at FROM commands WHERE request_id = 'old-cmd'"
    )
    assert row is not None and row["command"] == "wipe" and row["created_at"] == old


async def test_retention_show_set_and_run_cover_commands(
    conn: asyncpg.Connection, db_url: str, mode: StorageMode
) -> None:
    for age in (timedelta(days=40), timedelta(days=10)):
        await conn.execute(
            "INSERT INTO commands (request_id, device_id, command, created_at)"
            " VALUES (gen_random_uuid()::text, 'd', 'lock', now() - $1::interval)",
            age,
        )
    set_ = await asyncio.to_thread(_telemetry, db_url, mode, "retention", "set", "commands", "30d")
    assert set_.returncode == 0, set_.stderr
    assert "commands: window 30d (was 90d)" in set_.stdout
    show = await asyncio.to_thread(_telemetry, db_url, mode, "retention", "show")
    assert show.returncode == 0, show.stderr
    assert "commands" in show.stdout
    run = await asyncio.to_thread(_telemetry, db_url, mode, "retention", "run", "commands")
    assert run.returncode == 0, run.stderr
    assert "commands: deleted 1 rows" in run.stdout
    assert await conn.fetchval("SELECT count(*) FROM commands") == 1
