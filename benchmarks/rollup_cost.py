"""What the rollups cost ingest (issue 14): the writer's flush SQL with and without them.

    .venv/bin/python -m benchmarks.rollup_cost [--rounds 4] [--rows 200000] [--batch 500]

Two databases per storage mode, both migrated to head; in one the rollups are dropped
(`service.db.rollups.drop_rollups`). A continuous aggregate adds TimescaleDB's invalidation
trigger to every insert into `device_heartbeats`; a rollup table adds nothing to the write path
(the maintenance task refreshes it), so postgres mode shows the noise of the measurement. The
flush SQL (`service.ingest.heartbeats.merge_heartbeats`, two connections as the writer runs
them) stores fresh rows into each database in turn, A B A B …, so both see the same machine
load; the ratio of the medians is the cost. Prints a Markdown table; every figure is measured.
"""

from __future__ import annotations

import argparse
import statistics
from datetime import UTC, datetime, timedelta
from typing import Any

from benchmarks import standalone
from benchmarks.baselines import ingest_like_rows, writer_sql
from benchmarks.database import EmbeddedCluster, connect, migrated_database
from benchmarks.fleet import BucketCursor
from service.db.rollups import drop_rollups
from service.retention.rollups import read_mechanism
from service.settings import StorageMode


async def _database(cluster: EmbeddedCluster, mode: StorageMode, name: str, rollups: bool) -> str:
    url = await migrated_database(cluster, name, mode)
    if not rollups:
        async with connect(url) as conn:
            statements: list[str] = []
            drop_rollups(statements.append, await read_mechanism(conn))
            for sql in statements:
                await conn.execute(sql)
    return url


async def bench_mode(cluster: EmbeddedCluster, mode: StorageMode, args: argparse.Namespace) -> dict[str, Any]:
    with_url = await _database(cluster, mode, f"rollup_cost_with_{mode}", rollups=True)
    without_url = await _database(cluster, mode, f"rollup_cost_without_{mode}", rollups=False)
    start = datetime.now(UTC) - timedelta(hours=20)
    runs: dict[str, list[float]] = {"with": [], "without": []}
    for k in range(args.rounds):
        for label, url in (("with", with_url), ("without", without_url)):
            # Fresh devices every run: every row is new, as in the batched-ingest phase.
            cursor = BucketCursor(start=start, limit=6000)
            rows = ingest_like_rows(f"r{k}{label}", 400, args.rows // args.batch, args.batch, cursor)
            result = await writer_sql(url, rows, batch=args.batch)
            assert result.rows == len(rows), (result.rows, len(rows))
            runs[label].append(result.rows_per_s)
    with_, without = statistics.median(runs["with"]), statistics.median(runs["without"])
    return {"mode": mode, "runs": runs, "with": with_, "without": without, "ratio": with_ / without}


def main() -> None:
    parser = standalone.parser(__doc__)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=500)
    args = parser.parse_args()
    results = standalone.run(args, bench_mode)
    print(f"writer flush SQL, {args.rows} rows per run in batches of {args.batch}, {args.rounds} runs each\n")
    print("| mode | with rollups, rows/s (median) | without, rows/s (median) | ratio | runs with / without |")
    print("|---|---|---|---|---|")
    for r in results:
        runs = " / ".join(", ".join(f"{v:,.0f}" for v in r["runs"][k]) for k in ("with", "without"))
        print(f"| {r['mode']} | {r['with']:,.0f} | {r['without']:,.0f} | {r['ratio']:.2f} | {runs} |")


if __name__ == "__main__":
    main()
