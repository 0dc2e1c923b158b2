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

from service.ingest.rows import (
    AckOutcome,
    AckResult,
    AckRow,
    CommandRecord,
    DispatchOutcome,
    DispatchRecord,
    DispatchRow,
    DownloadRow,
    HeartbeatRow,
)
from service.rollout.counts import hour_of

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
CREATE TEMP TABLE IF NOT EXISTS stage_acks (
    ord integer NOT NULL, request_id text NOT NULL, device_id text NOT NULL, status text NOT NULL,
    ts timestamptz, result jsonb, error text
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
ACK_COLUMNS = ("ord", "request_id", "device_id", "status", "ts", "result", "error")

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

# Plain-PostgreSQL mode: make sure partitions cover every accepted timestamp (used when an
# insert found no partition, e.g. after the maintenance task could not run for a while).
ENSURE_PARTITIONS_NOW = """
SELECT telemetry_ensure_partitions(
    table_name, partition_interval, now() - drop_after - partition_interval, now() + interval '1 day'
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
), commanded AS (
    -- The long-lived command, in the same statement: a dispatch never exists without it. A
    -- request_id whose key expired (2 days) while its command lives on (90) pushes again but
    -- names the same command.
    INSERT INTO commands (request_id, device_id, command, payload, created_by, created_at, updated_at)
    SELECT c.request_id, c.device_id, c.action, c.payload, c.created_by, k.sent_at, k.sent_at
    FROM claimed k JOIN candidate c USING (request_id)
    ON CONFLICT (request_id) DO NOTHING
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


# A device's acks, set-based and forward only. Per (command, device) the flush's furthest ack is
# the candidate; `locked` takes the command's row lock first (FOR UPDATE re-reads the latest
# committed version under READ COMMITTED, so two instances acking the same command serialize
# and the second sees the first's status), and the UPDATE applies only a forward move: rank
# pending 0 < delivered 1 < executed | failed 2, and nothing leaves a terminal status (expired
# included). A transition's time is the device's `ts`, held between the dispatch and now (a
# wrong device clock cannot put it before the command existed or in the future). Skipping
# `delivered` (an executed ack first) sets `delivered_at` too: the command was delivered.
# Returns, per acked command, its status before the flush, whether it moved, and its state now.
MERGE_ACKS = """
WITH staged AS (
    SELECT *, CASE status WHEN 'delivered' THEN 1 ELSE 2 END AS rank FROM stage_acks
), target AS (
    SELECT DISTINCT ON (request_id, device_id) * FROM staged
    ORDER BY request_id, device_id, rank DESC, ord
), locked AS (
    SELECT c.id, c.status AS previous, c.request_id, c.device_id, c.command, c.payload, c.status,
           c.created_at, c.updated_at, c.delivered_at, c.executed_at, c.failed_at, c.expired_at,
           c.result, c.error
    FROM commands c JOIN target t ON c.request_id = t.request_id AND c.device_id = t.device_id
    FOR UPDATE OF c
), moves AS (
    SELECT l.id, l.previous, t.status, t.rank, t.result, t.error,
           least(greatest(coalesce(t.ts, now()), l.created_at), now()) AS at
    FROM locked l JOIN target t ON l.request_id = t.request_id AND l.device_id = t.device_id
    WHERE t.rank > CASE l.previous WHEN 'pending' THEN 0 WHEN 'delivered' THEN 1 ELSE 3 END
), updated AS (
    UPDATE commands c SET
        status = m.status,
        delivered_at = coalesce(c.delivered_at, m.at),
        executed_at = CASE WHEN m.status = 'executed' THEN m.at ELSE c.executed_at END,
        failed_at = CASE WHEN m.status = 'failed' THEN m.at ELSE c.failed_at END,
        result = CASE WHEN m.rank = 2 THEN m.result ELSE c.result END,
        error = CASE WHEN m.rank = 2 THEN m.error ELSE c.error END,
        updated_at = now()
    FROM moves m
    WHERE c.id = m.id
    RETURNING c.id, m.previous, c.request_id, c.device_id, c.command, c.payload, c.status,
              c.created_at, c.updated_at, c.delivered_at, c.executed_at, c.failed_at, c.expired_at,
              c.result, c.error
)
-- (`previous` travels through the UPDATE's RETURNING: no join of two CTEs, whose sizes the
-- planner cannot estimate, on the write path.)
SELECT true AS changed, previous, request_id, device_id, command, payload, status, created_at,
       updated_at, delivered_at, executed_at, failed_at, expired_at, result, error
FROM updated
UNION ALL
SELECT false, l.previous, l.request_id, l.device_id, l.command, l.payload, l.status, l.created_at,
       l.updated_at, l.delivered_at, l.executed_at, l.failed_at, l.expired_at, l.result, l.error
FROM locked l WHERE l.id NOT IN (SELECT id FROM updated)
"""

ACK_RANK = {"pending": 0, "delivered": 1, "executed": 2, "failed": 2, "expired": 2}


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


async def merge_acks(conn: asyncpg.Connection, rows: Sequence[AckRow]) -> list[AckOutcome]:
    """Per row: whether it moved its command forward, repeated its status, contradicted it,
    or named no command of its device; and the command's state after the flush.

    Several acks of one command in one flush: the furthest is applied, and a nearer one on
    its way (a `delivered` before an `executed`) counts as changed too, as if applied first."""
    await conn.copy_records_to_table("stage_acks", records=numbered(rows), columns=ACK_COLUMNS)
    found: dict[tuple[str, str], tuple[bool, str, CommandRecord]] = {
        (r["request_id"], r["device_id"]): (r["changed"], r["previous"], CommandRecord.from_row(r))
        for r in await conn.fetch(MERGE_ACKS)
    }
    outcomes: list[AckOutcome] = []
    for row in rows:
        entry = found.get((row.request_id, row.device_id))
        if entry is None:
            outcomes.append(AckOutcome(AckResult.NOT_FOUND))
            continue
        changed, previous, command = entry
        if (
            changed
            and ACK_RANK[row.status] > ACK_RANK[previous]
            and (row.status == command.status or row.status == "delivered")
        ):
            result = AckResult.CHANGED
        elif row.status == command.status:
            result = AckResult.UNCHANGED
        else:
            result = AckResult.CONFLICT
        outcomes.append(AckOutcome(result, command, previous))
    return outcomes


def is_missing_partition(exc: BaseException) -> bool:
    return isinstance(exc, asyncpg.CheckViolationError) and "no partition of relation" in str(exc)
