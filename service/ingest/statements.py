"""The SQL one flush runs per table: binary COPY into a per-connection staging table, then one
set-based `INSERT … SELECT … ON CONFLICT` into the target, so that the database (not Python)
enforces the heartbeat bucket and the dispatch idempotency key across every writer.

Every staged row carries `ord`, its position in the flush, so that results (stored or
absorbed; created or existing) can be handed back to the request that sent the row.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg
import msgspec

from service.db.time_series import coverage
from service.ingest.rows import DispatchOutcome, DispatchRecord, DispatchRow, DownloadRow, HeartbeatRow

STAGING_DDL = """
CREATE TEMP TABLE IF NOT EXISTS stage_heartbeats (
    ord integer NOT NULL, device_id text NOT NULL, ts timestamptz NOT NULL, status text NOT NULL,
    battery_pct smallint NOT NULL, app_version text, network text, extra jsonb
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS stage_dispatches (
    ord integer NOT NULL, request_id text NOT NULL, device_id text NOT NULL, action text NOT NULL,
    payload jsonb, sent_at timestamptz NOT NULL, created_by bigint
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS stage_downloads (
    id bigint NOT NULL, ts timestamptz NOT NULL, build_id text NOT NULL, device_id text NOT NULL,
    token_id bigint, outcome text NOT NULL, bytes_downloaded bigint
) ON COMMIT DELETE ROWS;
"""

HEARTBEAT_COLUMNS = (
    "ord",
    "device_id",
    "ts",
    "status",
    "battery_pct",
    "app_version",
    "network",
    "extra",
)
DISPATCH_COLUMNS = ("ord", "request_id", "device_id", "action", "payload", "sent_at", "created_by")
DOWNLOAD_COLUMNS = ("id", "ts", "build_id", "device_id", "token_id", "outcome", "bytes_downloaded")

# Download events carry ids chosen by the writer, so that re-running a flush whose COMMIT
# outcome was unknown (connection lost mid-commit) cannot store an event twice.
MERGE_DOWNLOADS = """
INSERT INTO apk_download_events (id, ts, build_id, device_id, token_id, outcome, bytes_downloaded)
SELECT id, ts, build_id, device_id, token_id, outcome, bytes_downloaded FROM stage_downloads
ON CONFLICT DO NOTHING
RETURNING id, ts
"""

# Plain-PostgreSQL mode: make sure partitions cover every accepted timestamp (used when an
# insert found no partition, e.g. after the maintenance task could not run for a while). One
# day ahead is past the newest accepted time (now + max clock skew); for the slack below, see
# `coverage`.
ENSURE_PARTITIONS_NOW = f"""
SELECT telemetry_ensure_partitions(
    table_name, partition_interval, {coverage("drop_after", "interval '1 day'", slack="partition_interval")}
) FROM retention_policies WHERE partition_interval IS NOT NULL
"""

# The first heartbeat of a (device, bucket) in the flush is the candidate; it is stored unless
# the bucket already holds one (from an earlier flush or another instance). Returns the `ord`
# of every stored row; every other staged row was absorbed by its bucket.
MERGE_HEARTBEATS = """
WITH staged AS (
    SELECT *, date_bin(make_interval(secs => $1), ts, timestamptz 'epoch') AS bucket_start
    FROM stage_heartbeats
), candidate AS (
    SELECT DISTINCT ON (device_id, bucket_start) * FROM staged ORDER BY device_id, bucket_start, ord
), inserted AS (
    INSERT INTO device_heartbeats
        (device_id, bucket_start, ts, status, battery_pct, app_version, network, extra)
    SELECT device_id, bucket_start, ts, status, battery_pct, app_version, network, extra
    FROM candidate
    ON CONFLICT (device_id, bucket_start) DO NOTHING
    RETURNING device_id, bucket_start
)
SELECT c.ord FROM candidate c JOIN inserted i USING (device_id, bucket_start)
"""

# Claims each new request_id in fcm_dispatch_keys (waiting, under the primary key, for any
# concurrent writer of the same key to commit or roll back) and inserts a dispatch only for the
# keys this statement claimed.
MERGE_DISPATCHES = """
WITH candidate AS (
    SELECT DISTINCT ON (request_id) * FROM stage_dispatches ORDER BY request_id, ord
), claimed AS (
    INSERT INTO fcm_dispatch_keys (request_id, dispatch_id, sent_at)
    SELECT request_id, nextval('fcm_dispatches_id_seq'), sent_at FROM candidate
    ON CONFLICT (request_id) DO NOTHING
    RETURNING request_id, dispatch_id, sent_at
)
INSERT INTO fcm_dispatches (id, sent_at, request_id, device_id, action, payload, created_by)
SELECT k.dispatch_id, k.sent_at, c.request_id, c.device_id, c.action, c.payload, c.created_by
FROM claimed k JOIN candidate c USING (request_id)
RETURNING id, request_id, device_id, action, payload, sent_at, status
"""

# Read after MERGE_DISPATCHES in the same transaction: a fresh snapshot that sees every key
# another writer committed while this flush waited on it.
EXISTING_DISPATCHES = """
SELECT k.dispatch_id AS id, k.request_id, d.device_id, d.action, d.payload, k.sent_at, d.status
FROM fcm_dispatch_keys k
LEFT JOIN fcm_dispatches d ON d.id = k.dispatch_id AND d.sent_at = k.sent_at
WHERE k.request_id = ANY($1::text[])
"""


async def prepare_connection(conn: asyncpg.Connection) -> None:
    """Per-connection setup: JSON codecs and the staging tables."""
    await set_json_codecs(conn)
    await conn.execute(STAGING_DDL)


async def set_json_codecs(conn: asyncpg.Connection) -> None:
    """JSON in and out as Python values, in binary format."""
    # Binary codecs so that binary COPY can carry JSON; jsonb's binary form is a version byte
    # (1) followed by the JSON text.
    await conn.set_type_codec(
        "jsonb",
        encoder=lambda v: b"\x01" + msgspec.json.encode(v),
        decoder=lambda b: msgspec.json.decode(b[1:]),
        schema="pg_catalog",
        format="binary",
    )
    await conn.set_type_codec(
        "json",
        encoder=msgspec.json.encode,
        decoder=msgspec.json.decode,
        schema="pg_catalog",
        format="binary",
    )


def numbered(rows: Sequence[tuple[object, ...]]) -> list[tuple[object, ...]]:
    """The rows as staged: each led by its `ord`, its position in the flush."""
    return [(ord_, *row) for ord_, row in enumerate(rows)]


async def merge_heartbeats(
    conn: asyncpg.Connection, rows: Sequence[HeartbeatRow], bucket_seconds: int
) -> list[bool]:
    """Per row: stored (True), or absorbed by its device's bucket (False)."""
    await conn.copy_records_to_table("stage_heartbeats", records=numbered(rows), columns=HEARTBEAT_COLUMNS)
    stored = {r["ord"] for r in await conn.fetch(MERGE_HEARTBEATS, float(bucket_seconds))}
    return [ord_ in stored for ord_ in range(len(rows))]


async def merge_dispatches(conn: asyncpg.Connection, rows: Sequence[DispatchRow]) -> list[DispatchOutcome]:
    """Per row: whether it created the dispatch (only the first row of a request_id in the
    flush can), and the dispatch stored under its request_id."""
    await conn.copy_records_to_table("stage_dispatches", records=numbered(rows), columns=DISPATCH_COLUMNS)
    created = {r["request_id"]: DispatchRecord.from_row(r) for r in await conn.fetch(MERGE_DISPATCHES)}
    others = list({row.request_id for row in rows} - created.keys())
    existing: dict[str, DispatchRecord] = {}
    if others:
        for r in await conn.fetch(EXISTING_DISPATCHES, others):
            existing[r["request_id"]] = DispatchRecord.from_row(r)
    outcomes: list[DispatchOutcome] = []
    seen: set[str] = set()
    for row in rows:
        if row.request_id in created:
            outcomes.append(DispatchOutcome(row.request_id not in seen, created[row.request_id]))
        else:
            outcomes.append(DispatchOutcome(False, existing[row.request_id]))
        seen.add(row.request_id)
    return outcomes


async def merge_downloads(conn: asyncpg.Connection, rows: Sequence[DownloadRow]) -> list[bool]:
    """Per row: stored (True), or already there under its (id, ts), e.g. a retried event with
    a client key, or an earlier row of the same flush (False)."""
    await conn.copy_records_to_table("stage_downloads", records=rows, columns=DOWNLOAD_COLUMNS)
    inserted = {(r["id"], r["ts"]) for r in await conn.fetch(MERGE_DOWNLOADS)}
    stored = []
    for row in rows:
        key = (row.id, row.ts)
        stored.append(key in inserted)
        inserted.discard(key)  # a duplicate later in the flush was not the stored one
    return stored


def is_missing_partition(exc: BaseException) -> bool:
    return isinstance(exc, asyncpg.CheckViolationError) and "no partition of relation" in str(exc)
