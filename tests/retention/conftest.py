"""Retention fixtures on top of `tests/conftest.py` (`mode`, `db_url`, `conn`)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from service.settings import StorageMode
from tests.support.jobs import pause_background_jobs


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
