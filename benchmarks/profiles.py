"""Benchmark profiles: how big the fleet, the history and every phase are.

`quick` is sized for CI (both storage modes in under 3 minutes on 2 cores); `full` is the run
recorded in `benchmarks/RESULTS.md`. Every field can be overridden from the command line.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    # Fleet: N enrolled devices over C concurrent connections, one heartbeat per device per
    # `heartbeat_interval` seconds, plus dispatch, download and operator query traffic.
    devices: int
    connections: int
    heartbeat_interval: float
    fleet_seconds: float
    # Closed-loop phases: trivial aiohttp handler (HTTP ceiling) and service saturation.
    ceiling_seconds: float
    half_ceiling_seconds: float
    # Batched ingest: `batch_connections` clients posting `batch_size` heartbeats per request.
    batch_size: int
    batch_connections: int
    batch_seconds: float
    ingest_devices: int
    # Operator queries measured alone (closed loop, `query_connections` clients; one client
    # gives the latency without queueing behind other requests), and the same SQL through asyncpg.
    query_requests: int
    query_connections: int
    sql_samples: int
    # Write-queue overload: `overload_connections` clients each post a maximal batch.
    overload_seconds: float
    overload_connections: int
    # Database baselines.
    copy_rows: int
    insert_seconds: float
    insert_connections: int
    # History pre-fill: `prefill_devices` devices, one heartbeat per `prefill_interval` seconds,
    # over the 2-day window plus `prefill_expired_hours` older than it (what cleanup drops).
    prefill_devices: int
    prefill_interval: float
    prefill_expired_hours: float
    prefill_dispatches_per_device: int
    # Fleet view (benchmarks/fleet_view.py, in its own database of the same cluster): devices
    # with presence pre-filled, and how many of them reach their deadline at once. 0: skipped.
    fleet_view_devices: int = 0
    fleet_view_expiring: int = 0

    def with_overrides(self, overrides: dict[str, Any]) -> Profile:
        known = {f.name for f in fields(self)}
        return replace(self, **{k: v for k, v in overrides.items() if k in known and v is not None})

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


QUICK = Profile(
    name="quick",
    devices=400,
    connections=100,
    heartbeat_interval=10.0,
    fleet_seconds=6.0,
    ceiling_seconds=4.0,
    half_ceiling_seconds=4.0,
    batch_size=500,
    batch_connections=32,
    batch_seconds=4.0,
    ingest_devices=40,
    query_requests=1000,
    query_connections=1,
    sql_samples=1000,
    overload_seconds=3.0,
    overload_connections=500,
    copy_rows=100_000,
    insert_seconds=3.0,
    insert_connections=10,
    prefill_devices=400,
    prefill_interval=600.0,
    prefill_expired_hours=6.0,
    prefill_dispatches_per_device=5,
    fleet_view_devices=10_000,
    fleet_view_expiring=5_000,
)

FULL = Profile(
    name="full",
    devices=10_000,
    connections=500,
    heartbeat_interval=30.0,
    fleet_seconds=60.0,
    ceiling_seconds=20.0,
    half_ceiling_seconds=30.0,
    batch_size=500,
    batch_connections=64,
    batch_seconds=15.0,
    ingest_devices=200,
    query_requests=3000,
    query_connections=1,
    sql_samples=3000,
    overload_seconds=10.0,
    overload_connections=500,
    copy_rows=1_000_000,
    insert_seconds=15.0,
    insert_connections=10,
    prefill_devices=10_000,
    prefill_interval=180.0,
    prefill_expired_hours=6.0,
    prefill_dispatches_per_device=100,  # 1 M dispatches: the lookup goal's table size
    fleet_view_devices=100_000,
    fleet_view_expiring=10_000,
)

PROFILES: dict[str, Profile] = {p.name: p for p in (QUICK, FULL)}
