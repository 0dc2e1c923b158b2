"""The summary snapshot: computed once per max age however many ask at once, then recomputed."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import asyncpg

from service.fleet.summary import SummarySnapshot
from tests.support.fleet import add_devices


async def test_concurrent_callers_share_one_computation_until_it_is_older_than_max_age(
    pool: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    await add_devices(conn, ["a", "b"])
    snapshot = SummarySnapshot()
    answers = await asyncio.gather(*(snapshot.get(pool, timedelta(minutes=1)) for _ in range(8)))
    assert all(a is answers[0] for a in answers)
    assert answers[0].total == 2 and answers[0].presence["never_seen"] == 2

    await add_devices(conn, ["c"])
    assert (await snapshot.get(pool, timedelta(minutes=1))).total == 2  # still the snapshot
    fresh = await snapshot.get(pool, timedelta(0))
    assert fresh.total == 3 and fresh.as_of > answers[0].as_of
