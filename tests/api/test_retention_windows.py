"""Timestamps are validated against the retention windows in force (`retention_policies`, as
`telemetry retention set` leaves it), not the configured defaults: a row the database no longer
keeps fails its own request, naming `ts`, and never the batch it would have shared."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from service.api.state import SERVICES
from service.db.time_series import HEARTBEATS
from service.retention.cleanup import run_cleanup
from service.retention.policies import set_window
from service.settings import Settings, StorageMode
from tests.support.app import Api


@pytest.fixture
def app_settings(app_settings: Settings) -> Settings:
    # A long batch window: the old heartbeat and the 20 fresh ones would share one batch.
    return replace(app_settings, batch_window=timedelta(milliseconds=300))


def dev(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_a_heartbeat_past_the_window_in_force_fails_alone_naming_ts_and_the_others_commit(
    api: Api, mode: StorageMode, app_settings: Settings
) -> None:
    old_token = await api.enroll("window-old")
    tokens = [await api.enroll(f"window-{i}") for i in range(20)]
    conn = await asyncpg.connect(api.db_url)
    try:  # what `telemetry retention set device_heartbeats 36h` and `retention run` do
        await set_window(conn, mode, HEARTBEATS, timedelta(hours=36), app_settings.partition_lookahead)
        await run_cleanup(conn, mode, [HEARTBEATS])
    finally:
        await conn.close()
    windows = api.app[SERVICES].windows
    deadline = time.monotonic() + windows.max_age + windows.read_timeout
    while windows.window(HEARTBEATS.name) != timedelta(hours=36):  # the staleness bound
        assert time.monotonic() < deadline, "the window set was not applied within the bound"
        await asyncio.sleep(0.05)
    now = datetime.now(UTC)

    async def post(token: str, ts: datetime) -> tuple[int, Any]:
        body = {"status": "ok", "battery_pct": 50, "ts": ts.isoformat()}
        r = await api.client.post("/v1/heartbeats", json=body, headers=dev(token))
        return r.status, await r.json()

    (old_status, old_body), *fresh = await asyncio.gather(
        post(old_token, now - timedelta(hours=47)), *(post(t, now - timedelta(seconds=5)) for t in tokens)
    )
    assert [status for status, _ in fresh] == [200] * 20, fresh
    assert old_status == 422 and old_body["error"]["field"] == "ts", old_body
    assert await api.count("SELECT count(*) FROM device_heartbeats WHERE device_id LIKE 'window-%'") == 20
