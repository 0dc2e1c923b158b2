"""Before a command touches its database: is it reachable, in the storage mode asked for, at head?

Guarantees:
* `check_database` opens one connection (answered within `db_connect_timeout` or it raises
  `TimeoutError`) and closes it; it changes nothing in the database.
* It raises the driver's own exceptions (`OSError`, `socket.gaierror`, `TimeoutError`,
  `asyncpg.InvalidPasswordError`, `asyncpg.InvalidCatalogNameError`, …), a `StorageModeError`
  when a forced mode cannot be used, and `SchemaBehindError` when `need_head` and the schema
  is not at head: the CLI's one error path turns each into one line.
* `wait_for_database` retries only what may heal by itself (refused, DNS, timeout, a server
  still starting up), with backoff, for at most `db_wait`; a wrong password or an unknown
  database fails at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import asyncpg

from service.db import storage_mode
from service.db.errors import may_heal_by_waiting
from service.db.urls import asyncpg_dsn
from service.settings import Settings, StorageMode


class SchemaBehindError(RuntimeError):
    """The database's schema is not at the head revision this code needs."""

    def __init__(self, current: frozenset[str], heads: frozenset[str]) -> None:
        self.current = current
        self.heads = heads
        at = ", ".join(sorted(current)) or "no revision (empty database)"
        super().__init__(f"the schema is at {at}, this version needs {', '.join(sorted(heads))}")


async def connect(url: str, settings: Settings) -> asyncpg.Connection:
    timeout = settings.db_connect_timeout.total_seconds()
    # asyncpg's own timeout covers the TCP connect and the start-up exchange; the outer one also
    # bounds a DNS lookup that hangs.
    async with asyncio.timeout(timeout + 1):
        return await asyncpg.connect(asyncpg_dsn(url), timeout=timeout)


def read_revisions(url: str, settings: Settings) -> frozenset[str]:
    """`current_revisions` of the database at `url`, from synchronous code (the CLI)."""

    async def read() -> frozenset[str]:
        conn = await connect(url, settings)
        try:
            return await current_revisions(conn)
        finally:
            await conn.close()

    return asyncio.run(read())


async def current_revisions(conn: asyncpg.Connection) -> frozenset[str]:
    exists = await conn.fetchval("SELECT to_regclass('alembic_version') IS NOT NULL")
    if not exists:
        return frozenset()
    return frozenset(r[0] for r in await conn.fetch("SELECT version_num FROM alembic_version"))


async def check_database(
    url: str, settings: Settings, *, need_head: frozenset[str] | None = None
) -> StorageMode:
    """Connect, decide the storage mode, and (given head revisions) insist on them."""
    conn = await connect(url, settings)
    try:
        mode = await storage_mode.detect(conn, settings.storage_mode)
        if need_head is not None:
            current = await current_revisions(conn)
            if current != need_head:
                raise SchemaBehindError(current, need_head)
        return mode
    finally:
        await conn.close()


async def wait_for_database(
    url: str,
    settings: Settings,
    log: logging.Logger,
    *,
    describe: Callable[[BaseException], str] = str,
) -> None:
    """Return once a connection succeeds; retry healable failures until `db_wait` has passed,
    logging one line per failed attempt; then raise the last failure."""
    deadline = time.monotonic() + settings.db_wait.total_seconds()
    delay = 0.25
    attempt = 0
    while True:
        attempt += 1
        try:
            conn = await connect(url, settings)
        except Exception as exc:
            left = deadline - time.monotonic()
            if not may_heal_by_waiting(exc) or left <= 0:
                raise
            pause = min(delay, left)
            log.warning(
                "waiting for the database (attempt %d, %s); retrying in %.1fs, giving up in %.0fs",
                attempt,
                describe(exc),
                pause,
                left,
            )
            await asyncio.sleep(pause)
            delay = min(delay * 2, 5.0)
            continue
        await conn.close()
        if attempt > 1:
            log.info("database reachable after %d attempts", attempt)
        return
