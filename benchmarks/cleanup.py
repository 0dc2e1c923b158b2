"""Retention cleanup of the expired part of the history, and `DELETE` of the same rows.

The rows cleanup will drop are those in the chunks (timescale) or partitions (postgres) that
lie wholly before now - window: their upper bound is `boundary`. `DELETE` is measured two ways
before the cleanup runs, both on exactly those rows:

* the whole job a DELETE-based retention does: on a plain table holding a copy of the expired
  rows with the same indexes, `DELETE … WHERE bucket_start < boundary` (committed) and then the
  `VACUUM` that makes the space reusable. This is the figure the ratio uses.
* in place: the same `DELETE` on the real table inside a transaction that is rolled back (so
  the rows are still there for the cleanup): no commit, no VACUUM, a lower bound.

Cleanup is the product's own path: `telemetry retention run device_heartbeats` when the command
exists, else what it runs (timescale: `CALL run_job(<retention policy job>)`; postgres:
`telemetry_drop_expired_partitions`). The command is timed in-process (its entry point is
called directly), so the figure does not include a Python interpreter start; it does include
the command's connection set-up and its exact count of the rows it drops.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from benchmarks.database import connect

WINDOW_SQL = "now() - (SELECT drop_after FROM retention_policies WHERE table_name = 'device_heartbeats')"


@dataclass(frozen=True, slots=True)
class CleanupResult:
    method: str
    boundary: datetime | None
    expired_rows: int
    rows_left_after: int
    cleanup_seconds: float
    delete_seconds: float | None
    deleted_rows: int | None
    chunks_dropped: int
    copy_delete_seconds: float | None = None
    copy_vacuum_seconds: float | None = None

    @property
    def delete_job_seconds(self) -> float | None:
        if self.copy_delete_seconds is None or self.copy_vacuum_seconds is None:
            return None
        return self.copy_delete_seconds + self.copy_vacuum_seconds

    @property
    def speedup(self) -> float | None:
        """(DELETE + VACUUM) ÷ cleanup."""
        job = self.delete_job_seconds
        if not job or self.cleanup_seconds <= 0:
            return None
        return job / self.cleanup_seconds

    def as_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "boundary": self.boundary.isoformat() if self.boundary else None,
            "expired_rows": self.expired_rows,
            "rows_left_after": self.rows_left_after,
            "cleanup_s": round(self.cleanup_seconds, 4),
            "delete_s": None if self.delete_seconds is None else round(self.delete_seconds, 3),
            "deleted_rows": self.deleted_rows,
            "chunks_dropped": self.chunks_dropped,
            "copy_delete_s": None if self.copy_delete_seconds is None else round(self.copy_delete_seconds, 3),
            "copy_vacuum_s": None if self.copy_vacuum_seconds is None else round(self.copy_vacuum_seconds, 3),
            "delete_and_vacuum_over_cleanup": None if self.speedup is None else round(self.speedup, 1),
        }


async def retention_jobs(conn: asyncpg.Connection) -> list[int]:
    return [
        r["job_id"]
        for r in await conn.fetch(
            "SELECT job_id FROM timescaledb_information.jobs WHERE proc_name = 'policy_retention'"
            " AND hypertable_name = 'device_heartbeats'"
        )
    ]


async def pause_scheduled_retention(dsn: str, mode: str) -> None:
    """Keep Timescale's scheduler from dropping the expired history before it is measured."""
    if mode != "timescale":
        return
    async with connect(dsn) as conn:
        await conn.execute(
            "SELECT alter_job(job_id, scheduled => false) FROM timescaledb_information.jobs"
            " WHERE proc_name = 'policy_retention'"
        )


async def _boundary(conn: asyncpg.Connection, mode: str) -> tuple[datetime | None, int]:
    if mode == "timescale":
        row = await conn.fetchrow(
            "SELECT max(range_end) AS b, count(*) AS n FROM timescaledb_information.chunks"
            f" WHERE hypertable_name = 'device_heartbeats' AND range_end < {WINDOW_SQL}"
        )
    else:
        row = await conn.fetchrow(
            "SELECT max(range_end) AS b, count(*) AS n FROM telemetry_partition_bounds('device_heartbeats')"
            f" WHERE range_end <= {WINDOW_SQL}"
        )
    return row["b"], int(row["n"])


async def _run_command(database_url: str, mode: str) -> None:
    """`telemetry retention run device_heartbeats` as its own process; raises with its stderr
    when it fails (never falls back to another way of cleaning up)."""
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "TELEMETRY_STORAGE_MODE": mode,
        "TELEMETRY_LOG_LEVEL": "WARNING",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "service",
        "retention",
        "run",
        "device_heartbeats",
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await proc.communicate()
    if proc.returncode != 0:
        tail = stderr.decode(errors="replace")[-2000:]
        raise RuntimeError(f"telemetry retention run exited with {proc.returncode}: {tail}")


async def _direct(conn: asyncpg.Connection, mode: str, prefix: str) -> tuple[str, float]:
    """What the command runs, without it."""
    if mode == "timescale":
        (job,) = await retention_jobs(conn)
        t = time.perf_counter()
        await conn.execute(f"CALL run_job({job})")
        return f"{prefix}CALL run_job({job}) (policy_retention)", time.perf_counter() - t
    t = time.perf_counter()
    await conn.fetch(f"SELECT * FROM telemetry_drop_expired_partitions('device_heartbeats', {WINDOW_SQL})")
    return f"{prefix}telemetry_drop_expired_partitions(…)", time.perf_counter() - t


async def _delete_on_copy(conn: asyncpg.Connection, boundary: datetime) -> tuple[float, float]:
    """DELETE (committed) then VACUUM of a plain, indexed copy of the expired rows."""
    await conn.execute("DROP TABLE IF EXISTS bench_delete_copy")
    await conn.execute(
        "CREATE TABLE bench_delete_copy (LIKE device_heartbeats INCLUDING DEFAULTS INCLUDING CONSTRAINTS"
        " INCLUDING INDEXES)"
    )
    try:
        await conn.execute(
            "INSERT INTO bench_delete_copy SELECT * FROM device_heartbeats WHERE bucket_start < $1", boundary
        )
        await conn.execute("VACUUM (ANALYZE) bench_delete_copy")
        t = time.perf_counter()
        await conn.execute("DELETE FROM bench_delete_copy WHERE bucket_start < $1", boundary)
        delete_seconds = time.perf_counter() - t
        t = time.perf_counter()
        await conn.execute("VACUUM bench_delete_copy")
        return delete_seconds, time.perf_counter() - t
    finally:
        await conn.execute("DROP TABLE IF EXISTS bench_delete_copy")


async def measure(dsn: str, database_url: str, mode: str, *, use_command: bool = True) -> CleanupResult:
    async with connect(dsn) as conn:
        boundary, chunks = await _boundary(conn, mode)
        if boundary is None:
            return CleanupResult("none", None, 0, 0, 0.0, None, None, 0)
        expired = int(
            await conn.fetchval("SELECT count(*) FROM device_heartbeats WHERE bucket_start < $1", boundary)
        )
        copy_delete, copy_vacuum = await _delete_on_copy(conn, boundary)
        tx = conn.transaction()
        await tx.start()
        t = time.perf_counter()
        status = await conn.execute("DELETE FROM device_heartbeats WHERE bucket_start < $1", boundary)
        delete_seconds = time.perf_counter() - t
        await tx.rollback()
        deleted = int(status.split()[-1])

        if use_command:
            t = time.perf_counter()
            await _run_command(database_url, mode)
            method, cleanup_seconds = "telemetry retention run device_heartbeats", time.perf_counter() - t
        else:
            method, cleanup_seconds = await _direct(conn, mode, "")
        left = int(
            await conn.fetchval("SELECT count(*) FROM device_heartbeats WHERE bucket_start < $1", boundary)
        )
    return CleanupResult(
        method,
        boundary,
        expired,
        left,
        cleanup_seconds,
        delete_seconds,
        deleted,
        chunks,
        copy_delete,
        copy_vacuum,
    )
