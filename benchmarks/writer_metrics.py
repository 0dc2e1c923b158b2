"""The service's own view of a phase, from `GET /metrics`: how many group-commit flushes ran,
how many rows each carried and how long each took, and how many writes were refused. Read
before and after a phase; the difference is the phase's."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aiohttp

_SERIES = {
    "telemetry_flush_batch_rows_count": "flushes",
    "telemetry_flush_batch_rows_sum": "flushed_rows",
    "telemetry_flush_duration_seconds_sum": "flush_seconds",
}


@dataclass(frozen=True, slots=True)
class WriterSnapshot:
    values: dict[str, float]

    def minus(self, earlier: WriterSnapshot) -> dict[str, Any]:
        d = {k: self.values.get(k, 0.0) - earlier.values.get(k, 0.0) for k in self.values}
        flushes = d.get("flushes", 0.0)
        return {
            "flushes": int(flushes),
            "rows_per_flush": round(d.get("flushed_rows", 0.0) / flushes, 1) if flushes else None,
            "flush_ms_mean": round(1000 * d.get("flush_seconds", 0.0) / flushes, 2) if flushes else None,
            "rejected_writes": int(d.get("rejected", 0.0)),
            "heartbeat_rows_written": int(d.get("heartbeat_rows", 0.0)),
        }


async def snapshot(base_url: str) -> WriterSnapshot | None:
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
            session.get(f"{base_url}/metrics") as resp,
        ):
            text = await resp.text()
    except (aiohttp.ClientError, TimeoutError):
        return None
    values = dict.fromkeys([*_SERIES.values(), "rejected", "heartbeat_rows"], 0.0)
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        name, _, value = line.rpartition(" ")
        series = name.split("{", 1)[0]
        if series in _SERIES:
            values[_SERIES[series]] += float(value)
        elif series == "telemetry_rejected_writes_total":
            values["rejected"] += float(value)
        elif series == "telemetry_rows_written_total" and 'table="device_heartbeats"' in name:
            values["heartbeat_rows"] += float(value)
    return WriterSnapshot(values)
