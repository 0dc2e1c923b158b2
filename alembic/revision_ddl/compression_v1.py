"""Heartbeat compression as revision 81159e67ec7f (20251107) ran it (timescale mode, TSL license).

A frozen copy (see `revision_ddl`) of `service/db/compression.py` as that revision used it.

Chunks of `device_heartbeats` older than `TELEMETRY_COMPRESS_AFTER_SECONDS` (default 6 h; 0:
off) are compressed by a TimescaleDB compression policy, segmented by `device_id` (a device's
history and the writer's conflict check read one segment) and ordered by `bucket_start`.

Late heartbeats: the writer's `INSERT … ON CONFLICT (device_id, bucket_start) DO NOTHING` works
on compressed chunks (TimescaleDB checks the unique key against the compressed segment), so a
heartbeat as late as the raw window allows is stored once and its duplicates are absorbed,
compressed or not (`tests/api/test_late_heartbeats.py`). Such a row is written uncompressed
into the compressed chunk, and the policy's next run compresses it.
"""

from __future__ import annotations

from datetime import timedelta

from revision_ddl.time_series_v1 import HEARTBEATS, Execute, interval_literal


def enable_compression(execute: Execute, compress_after: timedelta) -> None:
    """Compression settings and exactly one policy; nothing when `compress_after` is zero."""
    if compress_after <= timedelta(0):
        return
    execute(
        f"ALTER TABLE {HEARTBEATS.name} SET (timescaledb.compress, "
        "timescaledb.compress_segmentby = 'device_id', timescaledb.compress_orderby = 'bucket_start DESC')"
    )
    execute(
        f"SELECT add_compression_policy('{HEARTBEATS.name}', "
        f"compress_after => {interval_literal(compress_after)}, if_not_exists => true)"
    )


def disable_compression(execute: Execute) -> None:
    """Undo `enable_compression`: no policy, every chunk decompressed, compression off."""
    execute(f"SELECT remove_compression_policy('{HEARTBEATS.name}', if_exists => true)")
    execute(f"SELECT decompress_chunk(c, if_compressed => true) FROM show_chunks('{HEARTBEATS.name}') c")
    execute(
        "DO $$ BEGIN IF EXISTS (SELECT 1 FROM timescaledb_information.hypertables "
        f"WHERE hypertable_name = '{HEARTBEATS.name}' AND compression_enabled) THEN "
        f"ALTER TABLE {HEARTBEATS.name} SET (timescaledb.compress = false); END IF; END $$"
    )
