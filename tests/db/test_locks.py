"""Advisory lock keys are a protocol with running instances and existing databases: pinned."""

from __future__ import annotations

from service.db import locks, time_series


def test_lock_keys_keep_the_values_every_running_instance_uses() -> None:
    assert locks.MIGRATION == 0x7E1E_3E7
    assert locks.MAINTENANCE == 0x7E1E_3E8
    assert locks.partitions("device_heartbeats") == "telemetry_partitions:device_heartbeats"
    assert locks.retention_policy("fcm_dispatches") == "telemetry_retention_policy:fcm_dispatches"


def test_the_partition_functions_take_the_same_lock_as_python_callers() -> None:
    taken = "PERFORM pg_advisory_xact_lock(hashtext('telemetry_partitions:' || parent));"
    assert taken in time_series._ENSURE_PARTITIONS
    assert taken in time_series._DROP_EXPIRED
