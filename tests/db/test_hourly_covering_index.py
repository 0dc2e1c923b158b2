"""The device-history read is an index-only scan in both storage modes: the hourly rollup has
one index led by device_id, `(device_id, hour)`, and it INCLUDEs exactly the columns the read
selects (the primary key of the rollup table; the covering index on the continuous aggregate's
materialization hypertable, in place of TimescaleDB's group index)."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import asyncpg

from service.api.history import _DEVICE_HOURS
from service.db.rollups import HOURLY, HOURLY_COVERING_INDEX, HOURLY_READ_COLUMNS
from tests.db.hourly_indexes import device_indexes, storage

DEVICES = 200
DAYS = 30


async def test_the_hourly_rollup_has_one_device_index_including_every_column_the_read_selects(
    conn: asyncpg.Connection, mode: str
) -> None:
    (index,) = await device_indexes(conn, mode)
    assert index.key == ("device_id", "hour")
    assert index.included == HOURLY_READ_COLUMNS
    if mode == "postgres":
        assert index.primary_key and index.name == f"pk_{HOURLY.name}"
    else:
        assert index.name == HOURLY_COVERING_INDEX


def _scans(node: dict[str, Any]) -> list[dict[str, Any]]:
    """Every plan node that reads the hourly rollup's rows (a partition or a chunk)."""
    own = [node] if "Scan" in node["Node Type"] and "Relation Name" in node else []
    return own + [s for child in node.get("Plans", []) for s in _scans(child)]


async def test_the_device_history_read_is_an_index_only_scan_without_heap_fetches(
    conn: asyncpg.Connection, mode: str
) -> None:
    # Written hour by hour for the whole fleet, as refreshes write them: a device's hours lie
    # on as many heap pages as there are hours.
    top = await conn.fetchval(
        "SELECT date_bin('1 hour', now() - interval '2 hours', timestamptz '2000-01-01')"
    )
    target = await storage(conn, mode)
    # The test cluster commits asynchronously; VACUUM marks a page all-visible (what lets the
    # scan skip the heap) only once the inserting commit is flushed.
    await conn.execute("SET synchronous_commit = on")
    await conn.execute(
        f"""
        INSERT INTO {target} SELECT 'dev-' || d, h, 6, 20, 55.5, 90, 333, 3, 1, 1, 1, 0, '1.0',
               h, h + interval '59 minutes'
        FROM generate_series($1::timestamptz - make_interval(days => $3), $1::timestamptz,
                             interval '1 hour') h,
             generate_series(1, $2) d
        """,
        top,
        DEVICES,
        DAYS,
    )
    await conn.execute(f"VACUUM ANALYZE {target}")
    lo, hi = top - timedelta(days=DAYS), top + HOURLY.bucket

    # Everything materialized (watermark `hi`): the read is the rollup's part alone.
    explained = await conn.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {_DEVICE_HOURS}", "dev-7", lo, hi, hi)
    plan = json.loads(explained)[0]["Plan"]
    parts = {
        r[0]
        for r in await conn.fetch(
            "SELECT inhrelid::regclass::text FROM pg_inherits WHERE inhparent = $1::regclass", target
        )
    }
    scans = [s for s in _scans(plan) if s["Relation Name"] in {p.rpartition(".")[2] for p in parts}]
    assert scans, plan
    for scan in scans:
        assert scan["Node Type"] == "Index Only Scan", scan
        expected = "_pkey" if mode == "postgres" else f"_{HOURLY_COVERING_INDEX}"
        assert scan["Index Name"].endswith(expected), scan
        assert scan["Heap Fetches"] == 0, scan
    assert sum(s["Actual Rows"] for s in scans) == DAYS * 24 + 1
