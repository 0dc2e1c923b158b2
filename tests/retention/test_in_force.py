"""The windows in force for validation: read before serving, re-read within the staleness bound
wherever they were changed, and kept as last read when the database cannot be read."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from datetime import timedelta

import asyncpg
import pytest

from service.db.time_series import DOWNLOADS, HEARTBEATS
from service.retention import audit
from service.retention.in_force import WindowsInForce
from service.retention.policies import set_window
from service.settings import RetentionWindows, Settings, StorageMode

LOOKAHEAD = Settings().partition_lookahead
CONFIGURED = RetentionWindows()


@pytest.fixture
async def pool(db_url: str) -> AsyncIterator[asyncpg.Pool]:
    p = await asyncpg.create_pool(db_url, min_size=1, max_size=2)
    try:
        yield p
    finally:
        await p.close()


async def until(predicate: Callable[[], bool], within: float) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "not reached within the staleness bound"
        await asyncio.sleep(0.02)


async def test_start_reads_the_windows_in_force_not_the_configured_ones(
    conn: asyncpg.Connection, pool: asyncpg.Pool, mode: StorageMode
) -> None:
    await set_window(conn, mode, HEARTBEATS, timedelta(hours=36), LOOKAHEAD)
    await set_window(conn, mode, audit.COMMANDS, timedelta(days=30), LOOKAHEAD)
    windows = WindowsInForce(pool, CONFIGURED)
    assert windows.window(HEARTBEATS.name) == CONFIGURED.device_heartbeats  # before the first read
    await windows.start()
    try:
        assert windows.window(HEARTBEATS.name) == timedelta(hours=36)
        assert windows.window(audit.COMMANDS.name) == timedelta(days=30)
        assert windows.window(DOWNLOADS.name) == CONFIGURED.apk_download_events
    finally:
        await windows.stop()


async def test_a_window_set_elsewhere_is_applied_within_the_staleness_bound(
    conn: asyncpg.Connection, pool: asyncpg.Pool, mode: StorageMode
) -> None:
    windows = WindowsInForce(pool, CONFIGURED, max_age=0.2, read_timeout=1.0)
    await windows.start()
    try:
        await set_window(conn, mode, HEARTBEATS, timedelta(hours=36), LOOKAHEAD)  # another connection
        started = time.monotonic()
        await until(lambda: windows.window(HEARTBEATS.name) == timedelta(hours=36), within=1.2)
        assert time.monotonic() - started <= windows.max_age + windows.read_timeout
    finally:
        await windows.stop()


async def test_a_failing_reread_keeps_the_windows_last_read_and_is_logged_when_it_starts_and_ends(
    conn: asyncpg.Connection, db_url: str, mode: StorageMode, caplog: pytest.LogCaptureFixture
) -> None:
    await set_window(conn, mode, HEARTBEATS, timedelta(hours=36), LOOKAHEAD)
    pool = await asyncpg.create_pool(db_url, min_size=1, max_size=1)
    windows = WindowsInForce(pool, CONFIGURED, max_age=0.05, read_timeout=0.5)
    await windows.start()
    try:
        # Every re-read now waits on the one connection of the pool, held here, and times out.
        async with pool.acquire():
            await set_window(conn, mode, HEARTBEATS, timedelta(hours=40), LOOKAHEAD)
            await asyncio.sleep(1.5)
            assert windows.window(HEARTBEATS.name) == timedelta(hours=36)
        await until(lambda: windows.window(HEARTBEATS.name) == timedelta(hours=40), within=1.0)
    finally:
        await windows.stop()
        await pool.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "service.retention.in_force"]
    assert len(lines) == 2 and lines[0].startswith("cannot read") and "again" in lines[1], lines
    assert all(r.levelno == logging.WARNING for r in caplog.records if r.name == "service.retention.in_force")
