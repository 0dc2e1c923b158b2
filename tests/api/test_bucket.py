"""The bucket the API reports for a heartbeat is the one the database stores it under."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from service.db.buckets import EPOCH, bucket_start


@pytest.mark.parametrize("bucket_seconds", [1, 7, 10, 60, 3600])
async def test_bucket_start_matches_date_bin(conn: asyncpg.Connection, bucket_seconds: int) -> None:
    rng = random.Random(bucket_seconds)
    now = datetime.now(UTC)
    instants = [now - timedelta(microseconds=rng.randrange(0, 3 * 86_400 * 10**6)) for _ in range(2000)]
    instants += [
        EPOCH + timedelta(seconds=bucket_seconds * k) - timedelta(microseconds=d)
        for k in (1, 10**5)
        for d in (0, 1)
    ]
    rows = await conn.fetch(
        "SELECT t, date_bin(make_interval(secs => $2), t, 'epoch') AS b FROM unnest($1::timestamptz[]) t",
        instants,
        bucket_seconds,
    )
    assert len(rows) == len(instants)
    assert [bucket_start(r["t"], bucket_seconds) for r in rows] == [r["b"] for r in rows]
