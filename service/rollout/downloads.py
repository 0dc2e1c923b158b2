"""APK download events as the writer stores them: the row, its staging, its merge, which also
keeps the rollout funnel's per-hour counts (`service.rollout.counts`) in the same statement."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import NamedTuple

import asyncpg

from service.ingest.writer import Merge, RowMerge, Stage
from service.rollout.counts import hour_of


class DownloadRow(NamedTuple):
    """`id` is chosen by the caller (see `api.downloads.event_id`), never by a sequence."""

    id: int
    ts: datetime
    build_id: str
    device_id: str
    token_id: int | None
    outcome: str
    bytes_downloaded: int | None


# No `ord`: the caller's `id` (with `ts`) names each row.
STAGE = Stage.of(DownloadRow, "stage_downloads", numbered=False)

# Download events carry ids chosen by the writer, so that re-running a flush whose COMMIT
# outcome was unknown (connection lost mid-commit) cannot store an event twice. The same
# statement adds the events it stored (and only those) to the rollout funnel's per-hour counts
# (`service.rollout.counts`), grouped by build, hour and outcome, upserted in key order so that
# two flushes lock the count rows in the same order.
MERGE_DOWNLOADS = f"""
WITH stored AS (
    INSERT INTO apk_download_events (id, ts, build_id, device_id, token_id, outcome, bytes_downloaded)
    SELECT id, ts, build_id, device_id, token_id, outcome, bytes_downloaded FROM stage_downloads
    ON CONFLICT DO NOTHING
    RETURNING id, ts, build_id, outcome
), counted AS (
    INSERT INTO apk_download_counts AS c (build_id, bucket_start, outcome, events)
    SELECT build_id, {hour_of("ts")}, outcome, count(*) FROM stored GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
    ON CONFLICT (build_id, bucket_start, outcome) DO UPDATE SET events = c.events + EXCLUDED.events
)
SELECT id, ts FROM stored
"""


async def merge_downloads(conn: asyncpg.Connection, rows: Sequence[DownloadRow]) -> list[bool]:
    """Per row: stored (True), or already there under its (id, ts), e.g. a retried event with
    a client key, or an earlier row of the same flush (False)."""
    await STAGE.copy(conn, rows)
    inserted = {(r["id"], r["ts"]) for r in await conn.fetch(MERGE_DOWNLOADS)}
    stored = []
    for row in rows:
        key = (row.id, row.ts)
        stored.append(key in inserted)
        inserted.discard(key)  # a duplicate later in the flush was not the stored one
    return stored


MERGE: Merge[DownloadRow, bool] = RowMerge(
    DownloadRow, "downloads", "apk_download_events", STAGE, merge_downloads, sum
)
