"""service/metrics.py: series with known label values exist at 0 from the start (so that an
alert's `increase()` sees the first event), and a counter mirrored from TimescaleDB is exported
as a counter."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from service.api.state import SERVICES
from service.metrics import FAILURE_REASONS, REJECT_REASONS, Metrics
from tests.support.app import Api, HeartbeatsLock

ROOT = Path(__file__).resolve().parent.parent


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(metrics.registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_the_writers_reasons_are_the_ones_exported_at_zero() -> None:
    writer = (ROOT / "service/ingest/writer.py").read_text()
    assert set(re.findall(r"rejected_writes\.labels\(\"(\w+)\"\)", writer)) == set(REJECT_REASONS)
    used = re.findall(r"failed_writes\.labels\(([^)]*)\)", writer)
    assert {reason for call in used for reason in re.findall(r"\"(\w+)\"", call)} == set(FAILURE_REASONS)
    exported = samples(Metrics())
    for reason in REJECT_REASONS:
        assert exported[("telemetry_rejected_writes_total", (("reason", reason),))] == 0
    for reason in FAILURE_REASONS:
        assert exported[("telemetry_failed_writes_total", (("reason", reason),))] == 0


def test_a_mirrored_counter_is_exported_as_a_counter_with_the_value_it_was_set_to() -> None:
    metrics = Metrics()
    metrics.retention_job_failures.labels("retention:device_heartbeats").set(3)
    metrics.retention_job_failures.labels("retention:device_heartbeats").set(5)
    text = generate_latest(metrics.registry).decode()
    assert "# TYPE telemetry_retention_job_failures_total counter" in text
    key = ("telemetry_retention_job_failures_total", (("job", "retention:device_heartbeats"),))
    assert samples(metrics)[key] == 5


async def test_the_app_exports_its_queue_limit_and_whether_the_database_is_stalled(api: Api) -> None:
    text = await (await api.client.get("/metrics")).text()
    exported = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    settings = api.app[SERVICES].settings
    assert exported[("telemetry_write_queue_limit_rows", ())] == settings.queue_max_rows
    assert exported[("telemetry_database_stalled", ())] == 0


async def test_a_stalled_database_shows_in_the_next_scrape_and_clears_when_calls_move(
    api: Api, heartbeats_lock: HeartbeatsLock
) -> None:
    token = await api.enroll("stalled-1")
    watchdog = api.app[SERVICES].watchdog
    watchdog.stall_after = 0.3
    await heartbeats_lock.hold()
    write = asyncio.create_task(
        api.client.post(
            "/v1/heartbeats",
            json={"status": "ok", "battery_pct": 50},
            headers={"Authorization": f"Bearer {token}"},
        )
    )
    try:
        deadline = time.monotonic() + 10
        while not watchdog.stalled:
            assert time.monotonic() < deadline, "the held lock did not stall the flush"
            await asyncio.sleep(0.05)
        assert await scrape(api, "telemetry_database_stalled") == 1
    finally:
        await heartbeats_lock.release()
    assert (await write).status == 200
    assert await scrape(api, "telemetry_database_stalled") == 0


async def scrape(api: Api, name: str) -> float:
    text = await (await api.client.get("/metrics")).text()
    values = [s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name]
    assert len(values) == 1, (name, values)
    return values[0]
