"""Retention fixtures on top of `tests/conftest.py` (`mode`, `db_url`, `conn`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from service.settings import StorageMode


async def pause_background_jobs(conn: asyncpg.Connection) -> None:
    """Timescale: stop the scheduler from starting our jobs and wait out any run in progress.

    The retention and key-expiry jobs run once right after the migration that adds them; a test
    that inserts old rows and then checks exactly what its own `run` dropped must not race them.
    `CALL run_job` still runs a paused job.
    """
    await conn.execute(
        "SELECT alter_job(job_id, scheduled => false) FROM timescaledb_information.jobs WHERE job_id >= 1000"
    )
    for _ in range(200):
        running = await conn.fetchval(
            "SELECT count(*) FROM timescaledb_information.job_stats"
            " WHERE job_id >= 1000 AND job_status = 'Running'"
        )
        if not running:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("a TimescaleDB job kept running")


@pytest.fixture
async def quiet(db_url: str, mode: StorageMode) -> AsyncIterator[asyncpg.Connection]:
    """A connection to a migrated database whose background jobs will not interfere."""
    conn = await asyncpg.connect(db_url)
    try:
        if mode == "timescale":
            await pause_background_jobs(conn)
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def pools(db_url: str) -> AsyncIterator[list[asyncpg.Pool]]:
    """Two service instances' connection pools."""
    made = [await asyncpg.create_pool(db_url, min_size=1, max_size=3) for _ in range(2)]
    try:
        yield made
    finally:
        for pool in made:
            await pool.close()
