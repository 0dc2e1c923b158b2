"""Time buckets as the database bins them: `bucket_start` is the instant
`date_bin(make_interval(secs => bucket_seconds), ts, 'epoch')` computes (tests/api/test_bucket.py),
so Python can name a bucket (a heartbeat's, a rollup's day) without asking the database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def bucket_start(ts: datetime, bucket_seconds: int) -> datetime:
    """The start of the `bucket_seconds` bucket holding `ts`, counted from the epoch."""
    step = timedelta(seconds=bucket_seconds)
    return EPOCH + step * ((ts - EPOCH) // step)
