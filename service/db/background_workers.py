"""PostgreSQL's worker slots and TimescaleDB's background workers: whether jobs can start.

Every TimescaleDB job runs in a PostgreSQL background worker, and so do other things; all of
them take a slot from `max_worker_processes`, fixed at server start:

* TimescaleDB's launcher: one slot, always (it starts the schedulers);
* `timescaledb.max_background_workers`: TimescaleDB's own budget, one scheduler per database
  with the extension plus every job running at once (at a first start all of a database's
  jobs are due together);
* PostgreSQL's logical replication launcher: one slot unless `max_logical_replication_workers`
  is 0;
* parallel query: up to `max_parallel_workers` at once.

When PostgreSQL has no slot left, TimescaleDB's launcher logs "no available background worker
slots" and the database gets no scheduler at all (so no job ever runs, and none is recorded
as failed), or a job "failed to start a background worker". `WorkerSettings` does this
arithmetic once, for the embedded cluster's configuration and for `retention check`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the embedded cluster imports this module before it needs a driver
    import asyncpg

# TimescaleDB's own default and what timescaledb-tune sets: one database's scheduler and all
# of its jobs at once (1 + 9 project jobs + TimescaleDB's 2 at the first start), with room
# for a second database (a benchmark's, a test's) beside it.
BACKGROUND_WORKERS = 16
# PostgreSQL's defaults, for settings a caller leaves unset.
_DEFAULT_PARALLEL_WORKERS = 8
# Beyond the arithmetic above: one slot for another extension's worker or a logical
# replication apply worker, which is what timescaledb-tune's "+ 3" amounts to.
SPARE_SLOTS = 1

HINT = (
    "raise max_worker_processes in tandem with timescaledb.max_background_workers "
    "(one scheduler per database with TimescaleDB plus the jobs running at once) and restart PostgreSQL"
)

_SETTINGS = """
SELECT current_setting('max_worker_processes')::int AS max_worker_processes,
       current_setting('timescaledb.max_background_workers', true)::int AS max_background_workers,
       current_setting('max_parallel_workers')::int AS max_parallel_workers,
       current_setting('max_logical_replication_workers')::int AS max_logical_replication_workers
"""


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    """A server's worker settings, and what they allow TimescaleDB's jobs."""

    max_worker_processes: int
    max_background_workers: int
    max_parallel_workers: int
    logical_replication: bool = True  # max_logical_replication_workers > 0: its launcher runs

    @property
    def launchers(self) -> int:
        """Slots taken for good: TimescaleDB's launcher, and the logical replication launcher."""
        return 1 + int(self.logical_replication)

    @property
    def needed(self) -> int:
        """Slots for TimescaleDB to use all its background workers while parallel queries run."""
        return self.launchers + self.max_background_workers + self.max_parallel_workers

    def problems(self) -> list[str]:
        """Why jobs cannot start, or fail to start whenever several are due at once; [] if
        neither. Each names the settings and ends with what to do."""
        bg = self.max_background_workers
        if bg < 2:
            what = "turns TimescaleDB's background workers off" if bg == 0 else "leaves no worker for a job"
            return [
                f"timescaledb.max_background_workers = {bg} {what}: no TimescaleDB job runs in the "
                f"background; HINT: set it to "
                f"{BACKGROUND_WORKERS} and max_worker_processes to at least "
                f"{self.launchers + BACKGROUND_WORKERS + self.max_parallel_workers}, then restart PostgreSQL"
            ]
        if self.max_worker_processes < self.launchers + bg:
            return [
                f"max_worker_processes = {self.max_worker_processes} is less than the "
                f"{self.launchers + bg} slots TimescaleDB may take (timescaledb.max_background_workers"
                f" = {bg} + {self.launchers} for the launchers): the scheduler or jobs fail to start "
                f'("no available background worker slots", "failed to start a background worker"); '
                f"HINT: {HINT}; max_worker_processes >= {self.needed} leaves room for parallel queries "
                f"too (max_parallel_workers = {self.max_parallel_workers})"
            ]
        return []

    def warnings(self) -> list[str]:
        """Settings under which parallel queries can take the slots a job needs to start."""
        if self.problems() or self.max_worker_processes >= self.needed:
            return []
        return [
            f"max_worker_processes = {self.max_worker_processes} is less than the {self.needed} "
            f"TimescaleDB's jobs and parallel queries may use at once (timescaledb.max_background_workers"
            f" = {self.max_background_workers} + max_parallel_workers = {self.max_parallel_workers} + "
            f"{self.launchers} for the launchers): a job can fail to start while parallel queries run; "
            f"HINT: {HINT}"
        ]


def embedded_options(options: Mapping[str, str]) -> dict[str, str]:
    """The worker settings an embedded cluster with TimescaleDB starts with, given the options
    it was asked for (which win): enough slots for all of `needed` plus `SPARE_SLOTS`, which is
    what timescaledb-tune sets (background workers + parallel workers + 3)."""
    background = int(options.get("timescaledb.max_background_workers", BACKGROUND_WORKERS))
    parallel = int(options.get("max_parallel_workers", _DEFAULT_PARALLEL_WORKERS))
    logical = int(options.get("max_logical_replication_workers", 1)) > 0
    slots = WorkerSettings(0, background, parallel, logical).needed + SPARE_SLOTS
    return {"timescaledb.max_background_workers": str(background), "max_worker_processes": str(slots)}


async def read_worker_settings(conn: asyncpg.Connection) -> WorkerSettings | None:
    """The server's worker settings; None when TimescaleDB is not loaded (no such setting)."""
    row = await conn.fetchrow(_SETTINGS)
    if row["max_background_workers"] is None:
        return None
    return WorkerSettings(
        max_worker_processes=row["max_worker_processes"],
        max_background_workers=row["max_background_workers"],
        max_parallel_workers=row["max_parallel_workers"],
        logical_replication=row["max_logical_replication_workers"] > 0,
    )
