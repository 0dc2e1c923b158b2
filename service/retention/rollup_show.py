"""The rollups' part of `telemetry retention show`: mechanism, window, refresh and watermark."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TextIO

import asyncpg

from service.db.rollups import LICENSE_SQL, ROLLUPS, RollupMechanism
from service.db.windows import format_window
from service.retention import rollups
from service.retention.policies import stored_window
from service.retention.show import _job, format_time
from service.settings import StorageMode

_JOB = """
SELECT min(job_id) FROM timescaledb_information.jobs
WHERE proc_name = $1 AND hypertable_schema = current_schema() AND hypertable_name = $2
"""


@dataclass(frozen=True, slots=True)
class RollupStatus:
    name: str
    mechanism: RollupMechanism
    why: str  # why this mechanism
    window: timedelta | None
    start_offset: timedelta
    end_offset: timedelta
    schedule: timedelta
    reach: timedelta
    watermark_text: str
    job_text: str


def mechanism_reason(mode: StorageMode, mechanism: RollupMechanism, license_: str | None) -> str:
    if mechanism == "continuous_aggregate":
        return "continuous aggregate, refreshed and expired by TimescaleDB policies"
    if mode == "timescale":
        return (
            f"rollup table: TimescaleDB license is {license_!r} (Apache build, no continuous "
            "aggregates), so the service's maintenance refreshes and expires it"
        )
    return "rollup table, refreshed from its watermark and expired by the service's maintenance"


async def collect_rollups(conn: asyncpg.Connection, mode: StorageMode) -> list[RollupStatus]:
    mechanism = await rollups.mechanism_or_none(conn)
    if mechanism is None:
        return []
    license_ = await conn.fetchval(LICENSE_SQL) if mode == "timescale" else None
    out = []
    for r in ROLLUPS:
        wm = await rollups.watermark(conn, mechanism, r)
        job_text = "service maintenance"
        if mechanism == "continuous_aggregate":
            job = await _job(conn, await conn.fetchval(_JOB, "policy_refresh_continuous_aggregate", r.name))
            if job is None:
                job_text = "none: nothing refreshes it"
            else:
                error = (
                    f", last error: {job.last_error}"
                    if job.last_status == "Failed" and job.last_error
                    else ""
                )
                job_text = f"{job.job_id} (last status {job.last_status or '-'}{error})"
        out.append(
            RollupStatus(
                name=r.name,
                mechanism=mechanism,
                why=mechanism_reason(mode, mechanism, license_),
                window=await stored_window(conn, r.table),
                start_offset=r.start_offset,
                end_offset=r.end_offset,
                schedule=r.schedule,
                reach=r.reach,
                watermark_text=format_time(wm) if wm is not None else "- (nothing materialized yet)",
                job_text=job_text,
            )
        )
    return out


def rollup_fields(status: RollupStatus) -> list[tuple[str, str]]:
    return [
        ("mechanism", status.why),
        ("window", format_window(status.window)),
        (
            "refresh",
            f"buckets from {format_window(status.start_offset)} to {format_window(status.end_offset)} ago,"
            f" every {format_window(status.schedule)}",
        ),
        ("source must keep", f"{format_window(status.reach)} (the guard: refresh reach)"),
        ("watermark", status.watermark_text),
        ("refresh job", status.job_text),
    ]


def render_rollups(statuses: Sequence[RollupStatus], out: TextIO) -> None:
    """Plain `label  value` blocks, after the tables' ones."""
    for status in statuses:
        print(file=out)
        print(status.name, file=out)
        fields = rollup_fields(status)
        width = max(len(label) for label, _ in fields)
        for label, value in fields:
            print(f"  {label:<{width}}  {value}", file=out)
