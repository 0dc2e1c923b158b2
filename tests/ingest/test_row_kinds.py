"""A row kind is declared once: its staging table comes from its row type, the writer hands its
rows to its merge by type, and each lifecycle's status enum is the check its table holds."""

from __future__ import annotations

import typing
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from service.app import ROW_STAGES, row_merges
from service.commands.acks import AckRow
from service.commands.dispatches import MERGE as DISPATCHES
from service.commands.lifecycle import CommandStatus
from service.db.statuses import CheckedStatus
from service.ingest.heartbeats import HeartbeatRow
from service.ingest.writer import GroupCommitWriter
from service.metrics import Metrics
from service.rollout.installations import InstallationStatus


def test_every_merge_stages_exactly_its_row_types_fields() -> None:
    for merge in row_merges():
        fields = merge.row_type._fields
        assert merge.stage.columns == ((("ord",) if merge.stage.numbered else ()) + fields)
    assert [m.stage for m in row_merges()] == list(ROW_STAGES)


async def test_each_connection_of_the_pool_has_every_staging_table_as_derived(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        for merge in row_merges():
            hints = typing.get_type_hints(merge.row_type)
            # NOT NULL exactly where the row type's field cannot be None (`ord` never is).
            expected = [("ord", True)] if merge.stage.numbered else []
            expected += [
                (name, type(None) not in typing.get_args(hints[name])) for name in merge.row_type._fields
            ]
            columns = await conn.fetch(
                "SELECT attname, attnotnull FROM pg_attribute"
                " WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
                f"pg_temp.{merge.stage.table}",
            )
            assert [(c["attname"], c["attnotnull"]) for c in columns] == expected


async def test_the_writer_hands_rows_to_the_merge_of_their_type_and_refuses_others(
    pool: asyncpg.Pool,
) -> None:
    with pytest.raises(ValueError, match="two merges take DispatchRow"):
        GroupCommitWriter(pool, Metrics(), (DISPATCHES, DISPATCHES))
    writer = GroupCommitWriter(pool, Metrics(), (DISPATCHES,), batch_window=timedelta(milliseconds=2))
    await writer.start()
    try:
        with pytest.raises(TypeError, match="no merge takes HeartbeatRow rows"):
            await writer.submit([HeartbeatRow("d", datetime.now(UTC), "ok", 1, None, None, None)])
        with pytest.raises(TypeError, match="no merge takes AckRow rows"):
            await writer.submit([AckRow("r", "d", "delivered", None, None, None)])
        assert await writer.submit([]) == []
    finally:
        await writer.stop()


@pytest.mark.parametrize(
    ("table", "enum"), [("commands", CommandStatus), ("apk_installations", InstallationStatus)]
)
async def test_a_status_enum_is_the_check_constraint_the_live_table_holds(
    pool: asyncpg.Pool, table: str, enum: type[CheckedStatus]
) -> None:
    async with pool.acquire() as conn, conn.transaction():
        live = await conn.fetchrow(
            "SELECT pg_get_constraintdef(c.oid) AS def, format_type(a.atttypid, a.atttypmod) AS type"
            " FROM pg_constraint c JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attname = 'status'"
            " WHERE c.conrelid = $1::regclass AND c.contype = 'c' AND c.conname LIKE '%status_known'",
            table,
        )
        # The enum's text, through the same server's normalisation, on a column of the same type.
        await conn.execute(
            f"CREATE TEMP TABLE enum_check (status {live['type']}"
            f" CONSTRAINT enum_status_known CHECK ({enum.check_constraint()})) ON COMMIT DROP"
        )
        derived = await conn.fetchval(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'enum_status_known'"
        )
    assert derived == live["def"]
    assert all(f"'{status}'" in derived for status in enum)
