"""Command acks through the group-commit writer: set-based, forward only, one outcome per ack,
and the writer's isolation of a bad request kept for the new kind."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from service.app import row_merges
from service.commands.acks import AckResult, AckRow
from service.commands.dispatches import DispatchRow
from service.ingest.writer import GroupCommitWriter, WriteFailed
from service.metrics import Metrics

T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=30)


@pytest.fixture
async def writer(pool: asyncpg.Pool) -> AsyncIterator[GroupCommitWriter]:
    w = GroupCommitWriter(pool, Metrics(), row_merges(), batch_window=timedelta(milliseconds=100), flushers=1)
    await w.start()
    try:
        yield w
    finally:
        await w.stop()


def dispatch(request_id: str, device: str = "dev-1") -> DispatchRow:
    return DispatchRow(request_id, device, "lock", None, T0, None)


def ack(request_id: str, status: str, device: str = "dev-1", error: str | None = None) -> AckRow:
    return AckRow(request_id, device, status, None, None, error)


async def test_a_dispatch_and_its_ack_in_one_flush_find_each_other(writer: GroupCommitWriter) -> None:
    (created,), (outcome,) = await asyncio.gather(
        writer.submit([dispatch("r1")]), writer.submit([ack("r1", "delivered")])
    )
    assert created.created
    assert outcome.result is AckResult.CHANGED and outcome.previous == "pending"
    assert outcome.command is not None and outcome.command.status == "delivered"


async def test_every_ack_of_one_flush_gets_its_own_outcome(writer: GroupCommitWriter) -> None:
    await writer.submit([dispatch("a"), dispatch("b"), dispatch("c"), dispatch("d", "dev-2")])
    await writer.submit([ack("b", "executed")])
    results = await asyncio.gather(
        writer.submit([ack("a", "delivered"), ack("a", "executed")]),  # both on the way: changed
        writer.submit([ack("b", "executed")]),  # repeated
        writer.submit([ack("b", "delivered")]),  # backward
        writer.submit([ack("c", "failed"), ack("c", "executed")]),  # the second contradicts
        writer.submit([ack("d", "delivered")]),  # dev-2's command: not dev-1's
        writer.submit([ack("nope", "delivered")]),
    )
    got = [[o.result for o in r] for r in results]
    assert got[0] == [AckResult.CHANGED, AckResult.CHANGED]
    assert got[1] == [AckResult.UNCHANGED]
    assert got[2] == [AckResult.CONFLICT]
    assert sorted(got[3]) == sorted([AckResult.CHANGED, AckResult.CONFLICT])
    assert got[4] == [AckResult.NOT_FOUND] and got[5] == [AckResult.NOT_FOUND]
    assert results[0][1].command is not None and results[0][1].command.status == "executed"
    assert results[2][0].command is not None and results[2][0].command.status == "executed"


async def test_a_bad_ack_fails_alone_and_the_rest_of_its_flush_commits(
    writer: GroupCommitWriter, db_url: str
) -> None:
    await writer.submit([dispatch(f"r{i}") for i in range(8)])
    good = [asyncio.create_task(writer.submit([ack(f"r{i}", "delivered")])) for i in range(8)]
    # PostgreSQL text cannot hold NUL: the database refuses the row mid-flush.
    bad = asyncio.create_task(writer.submit([ack("r0", "failed", error="a\x00b")], request_id="bad-ack"))
    outcomes = await asyncio.gather(*good)
    with pytest.raises(WriteFailed) as info:
        await bad
    assert info.value.request_id == "bad-ack" and not info.value.transient
    assert all(o.result is AckResult.CHANGED for (o,) in outcomes)
    conn = await asyncpg.connect(db_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM commands WHERE status = 'delivered'") == 8
    finally:
        await conn.close()


async def test_two_writers_acking_one_command_at_once_move_it_forward_once(
    pool: asyncpg.Pool, db_url: str
) -> None:
    writers = [
        GroupCommitWriter(pool, Metrics(), row_merges(), batch_window=timedelta(milliseconds=5))
        for _ in range(2)
    ]
    for w in writers:
        await w.start()
    try:
        await writers[0].submit([dispatch(f"race-{i}") for i in range(50)])
        results = await asyncio.gather(
            *(w.submit([ack(f"race-{i}", "delivered")]) for i in range(50) for w in writers)
        )
    finally:
        for w in writers:
            await w.stop()
    changed = sum(o.result is AckResult.CHANGED for (o,) in results)
    unchanged = sum(o.result is AckResult.UNCHANGED for (o,) in results)
    assert (changed, unchanged) == (50, 50)
    moved = sum(w.metrics.rows_written.labels("commands")._value.get() for w in writers)  # type: ignore[attr-defined]
    assert moved == 50
