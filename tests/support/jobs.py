"""TimescaleDB's scheduler held still while a test checks what its own run did."""

from __future__ import annotations

import asyncio

import asyncpg


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
