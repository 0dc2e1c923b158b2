"""Which storage mode a database is in, or should be built in.

Rules, in order:
1. a forced mode (`TELEMETRY_STORAGE_MODE` or `--mode`) wins; forcing `timescale` on a server
   that cannot load the extension is an error, not a silent fallback;
2. a database whose heartbeats table already exists keeps the mode it was built in
   (partitioned table: postgres; hypertable: timescale) even if the extension appears later;
3. otherwise timescale when the extension is installed in the database or can be created
   (available and preloaded) under TimescaleDB's community license, else postgres.

An Apache-only TimescaleDB build (`timescaledb.license = 'apache'`, a server setting) has
hypertables but none of what timescale mode is for: retention policies, jobs, continuous
aggregates and compression are all community-licensed (`add_retention_policy` fails there). So
such a server is postgres mode's (native partitions, retention by the service), and forcing
timescale on it is an error naming the license.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from service.settings import ModeChoice, StorageMode

PROBE_SQL = """
SELECT
    EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') AS installed,
    EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb') AS available,
    current_setting('shared_preload_libraries') AS preload,
    current_setting('timescaledb.license', true) AS license,
    (SELECT c.relkind::text FROM pg_class c
       WHERE c.oid = to_regclass('device_heartbeats')) AS heartbeats_relkind
"""


class StorageModeError(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class Probe:
    installed: bool
    available: bool
    preload: str
    license: str | None  # None where the extension's library is not loaded
    heartbeats_relkind: str | None

    @property
    def timescale_loadable(self) -> bool:
        return self.installed or (self.available and "timescaledb" in self.preload)

    @property
    def apache_only(self) -> bool:
        return self.license == "apache"

    @property
    def built(self) -> StorageMode | None:
        """The mode the heartbeats table was built in; None before the first migration."""
        if self.heartbeats_relkind is None:
            return None
        return "postgres" if self.heartbeats_relkind == "p" else "timescale"


async def probe(conn: asyncpg.Connection | asyncpg.Pool) -> Probe:
    """What the database offers and holds, for `decide`."""
    row = await conn.fetchrow(PROBE_SQL)
    assert row is not None
    return Probe(**dict(row))


async def detect(conn: asyncpg.Connection | asyncpg.Pool, forced: ModeChoice) -> StorageMode:
    """The mode to run in: `decide` on what `conn`'s database offers and holds."""
    return decide(await probe(conn), forced)


def decide(probe: Probe, forced: ModeChoice) -> StorageMode:
    if forced == "timescale":
        if not probe.timescale_loadable:
            raise StorageModeError(
                "storage mode 'timescale' was forced but TimescaleDB cannot be used here "
                "(extension not installed, or not in shared_preload_libraries)"
            )
        if probe.apache_only and probe.built != "timescale":
            raise StorageModeError(
                "storage mode 'timescale' was forced but this server runs TimescaleDB's Apache-only "
                "build (timescaledb.license = 'apache'), which has no retention policies, jobs or "
                "continuous aggregates: use TELEMETRY_STORAGE_MODE=postgres or auto"
            )
        return "timescale"
    if forced == "postgres":
        return "postgres"
    if probe.heartbeats_relkind == "p":
        return "postgres"
    if probe.heartbeats_relkind == "r" and probe.installed:
        return "timescale"
    return "timescale" if probe.timescale_loadable and not probe.apache_only else "postgres"
