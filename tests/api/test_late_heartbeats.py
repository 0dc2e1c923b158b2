"""Late heartbeats into compressed chunks (timescale mode): the writer's merge stores a new one
once and absorbs its duplicates, as in an uncompressed chunk."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from service.settings import StorageMode
from tests.support.app import Api, first_maintenance_round
from tests.support.cluster import TestServer, create_database, migrate, settings_for


def dev(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_late_heartbeats_merge_into_a_compressed_chunk(api: Api, mode: StorageMode) -> None:
    if mode != "timescale":
        pytest.skip("compression is TimescaleDB's")
    # The app's first maintenance round runs the compression job itself (a test database has no
    # scheduler): let it end, or it and this test compress the same chunk at once.
    await first_maintenance_round(api)
    token = await api.enroll("late-1")
    late = (datetime.now(UTC) - timedelta(hours=8)).replace(microsecond=0)
    first = {"status": "ok", "battery_pct": 10, "ts": late.isoformat()}
    r = await api.client.post("/v1/heartbeats", json=first, headers=dev(token))
    assert r.status == 200 and (await r.json())["results"][0]["stored"] is True

    compressed = await api.count(
        "SELECT count(*) FROM (SELECT compress_chunk(c, if_not_compressed => true)"
        " FROM show_chunks('device_heartbeats', older_than => interval '6 hours') c) x"
    )
    assert compressed >= 1
    assert (
        await api.count(
            "SELECT count(*) FROM timescaledb_information.chunks WHERE hypertable_name = 'device_heartbeats'"
            " AND is_compressed AND range_start <= $1 AND $1 < range_end",
            late,
        )
        == 1
    )

    again = await api.client.post("/v1/heartbeats", json={**first, "battery_pct": 99}, headers=dev(token))
    assert (await again.json())["results"][0]["stored"] is False
    later = {"status": "idle", "battery_pct": 11, "ts": (late + timedelta(seconds=30)).isoformat()}
    new = await api.client.post("/v1/heartbeats", json={"heartbeats": [later, later]}, headers=dev(token))
    assert [x["stored"] for x in (await new.json())["results"]] == [True, False]
    rows = await api.count("SELECT count(*) FROM device_heartbeats WHERE device_id = 'late-1'")
    assert rows == 2
    assert (
        await api.count(
            "SELECT battery_pct FROM device_heartbeats WHERE device_id = 'late-1' AND ts = $1", late
        )
        == 10
    )


async def test_compression_policy_follows_the_setting(api: Api, mode: StorageMode) -> None:
    if mode != "timescale":
        pytest.skip("compression is TimescaleDB's")
    after = await api.count(
        "SELECT extract(epoch FROM (config->>'compress_after')::interval)::int"
        " FROM timescaledb_information.jobs"
        " WHERE proc_name = 'policy_compression' AND hypertable_name = 'device_heartbeats'"
    )
    assert after == 6 * 3600


async def test_compress_after_zero_turns_compression_off(pg_server: TestServer, mode: StorageMode) -> None:
    if mode != "timescale":
        pytest.skip("compression is TimescaleDB's")
    url = await create_database(pg_server)
    await migrate(url, mode, settings=settings_for(url, mode, compress_after=timedelta(0)))
    conn = await asyncpg.connect(url)
    try:
        assert not await conn.fetchval(
            "SELECT compression_enabled FROM timescaledb_information.hypertables"
            " WHERE hypertable_name = 'device_heartbeats'"
        )
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM timescaledb_information.jobs WHERE proc_name = 'policy_compression'"
            )
            == 0
        )
    finally:
        await conn.close()
