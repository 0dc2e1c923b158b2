"""Which storage mode a database is in, or should be built in.

Rules, in order:
1. a forced mode (`TELEMETRY_STORAGE_MODE` or `--mode`) wins; forcing `timescale` on a server
   that cannot load the extension is an error, not a silent fallback;
2. a database whose heartbeats table already exists keeps the mode it was built in
   (partitioned table: postgres; hypertable: timescale) even if the extension appears later;
3. otherwise timescale when the extension is installed in the database or can be created
   (available and preloaded), else postgres.
"""

from __future__ import annotations

from dataclasses import dataclass

from service.settings import ModeChoice, StorageMode

PROBE_SQL = """
SELECT
    EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') AS installed,
    EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb') AS available,
    current_setting('shared_preload_libraries') AS preload,
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
    heartbeats_relkind: str | None

    @property
    def timescale_loadable(self) -> bool:
        return self.installed or (self.available and "timescaledb" in self.preload)


def decide(probe: Probe, forced: ModeChoice) -> StorageMode:
    if forced == "timescale":
        if not probe.timescale_loadable:
            raise StorageModeError(
                "storage mode 'timescale' was forced but TimescaleDB cannot be used here "
                "(extension not installed, or not in shared_preload_libraries)"
            )
        return "timescale"
    if forced == "postgres":
        return "postgres"
    if probe.heartbeats_relkind == "p":
        return "postgres"
    if probe.heartbeats_relkind == "r" and probe.installed:
        return "timescale"
    return "timescale" if probe.timescale_loadable else "postgres"
