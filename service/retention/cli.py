"""`telemetry retention show | set TABLE WINDOW | run [TABLE] [--dry-run] | check`.

Exit codes: 0 done (`check`: every window holds; `WARNING …` lines may still name server
settings under which a job can fail to start); 1 a step failed (the others still ran, and
the report names the failed one) or `check` found a problem (one `PROBLEM …` line each); 2 the
command cannot run as asked (malformed window, unknown table, a window shorter than the refresh
reach of the rollup the table feeds: the message names both). Messages go to stderr, prefixed
`telemetry retention:`; reports go to stdout. Database failures (unreachable, refused
credentials, a storage mode forced against the database's, no schema) are raised to the CLI's
one error path (`service.cli_errors`), which prints one line and picks the exit code.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TextIO

import asyncpg

from service.audit.log import AuditAction, cli_actor, record
from service.db.retained import RetainedTable, RetentionKind
from service.db.rollups import GuardError, check_guard
from service.db.urls import asyncpg_dsn
from service.db.windows import WindowError, format_window, parse_window
from service.retention import audit
from service.retention.cleanup import CleanupReport, KeyExpiry, TableCleanup, run_cleanup
from service.retention.health import assess
from service.retention.policies import (
    SETTABLE,
    UnknownTableError,
    detect_storage_mode,
    read_policy,
    resolve_table,
    set_window,
)
from service.retention.rollup_show import collect_rollups, render_rollups
from service.retention.show import collect, collect_audit, format_time, render_plain, render_rich
from service.settings import Settings, StorageMode

PREFIX = "telemetry retention"


def _fail(message: object) -> None:
    print(f"{PREFIX}: {message}", file=sys.stderr)


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    retention = subparsers.add_parser("retention", help="retention windows and cleanup")
    verbs = retention.add_subparsers(dest="verb", required=True)
    verbs.add_parser("show", help="per-table retention state")
    set_ = verbs.add_parser("set", help="change a table's window")
    set_.add_argument("table")
    set_.add_argument("window", help="e.g. 2d, 36h, 90m, or seconds")
    run_ = verbs.add_parser("run", help="run retention now (the cron-able cleanup job)")
    run_.add_argument("table", nargs="?")
    run_.add_argument("--dry-run", action="store_true")
    verbs.add_parser(
        "check", help="exit 1, one line per problem, unless every window holds and every job succeeds"
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run the parsed `retention` verb against `settings.database_url` (resolved by
    `service.cli`); returns the process exit code."""
    # Input is checked before touching the database, so a typo fails fast and changes nothing.
    try:
        match args.verb:
            case "set":
                table = resolve_table(args.table)
                window = parse_window(args.window)
                check_guard(table.name, window)

                async def work(conn: asyncpg.Connection, mode: StorageMode) -> int:
                    return await _set(conn, mode, table, window, settings)

            case "run":
                chosen = [resolve_table(args.table)] if args.table else list(SETTABLE)
                tables = [t for t in chosen if t.kind is RetentionKind.TIME_SERIES]
                audits = [t for t in chosen if t.kind is RetentionKind.ROW_EXPIRY]

                async def work(conn: asyncpg.Connection, mode: StorageMode) -> int:
                    report = await run_cleanup(conn, mode, tables, dry_run=args.dry_run)
                    print_cleanup(report, sys.stdout)
                    expiries = [await audit.expire(conn, t, dry_run=args.dry_run) for t in audits]
                    for expiry in expiries:
                        print_audit_expiry(expiry, sys.stdout)
                    ok = report.ok and all(e.error is None for e in expiries)
                    return 0 if ok else 1

            case "check":

                async def work(conn: asyncpg.Connection, mode: StorageMode) -> int:
                    health = await assess(conn, mode, settings)
                    for problem in health.problems:
                        print(f"PROBLEM {problem}")
                    for warning in health.warnings:
                        print(f"WARNING {warning}")
                    if health.ok:
                        print(f"ok: every retention window holds ({mode} mode)")
                    return 0 if health.ok else 1

            case "show":

                async def work(conn: asyncpg.Connection, mode: StorageMode) -> int:
                    tables_, keys = await collect(conn, mode, settings)
                    audits_ = await collect_audit(conn, settings)
                    render = render_rich if sys.stdout.isatty() else render_plain
                    render(tables_, keys, sys.stdout, audits_)
                    render_rollups(await collect_rollups(conn, mode), sys.stdout)
                    return 0

            case _:
                _fail(f"unknown verb {args.verb!r}")
                return 2
    except (UnknownTableError, WindowError, GuardError) as exc:
        _fail(exc)
        return 2

    # Database failures (unreachable, refused credentials, a forced mode the database was not
    # built in, no schema) go to the CLI's one error path.
    return asyncio.run(_with_connection(settings.database_url or "", settings, work))


async def _with_connection(
    url: str, settings: Settings, work: Callable[[asyncpg.Connection, StorageMode], Awaitable[int]]
) -> int:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        mode = await detect_storage_mode(conn, settings.storage_mode)
        return await work(conn, mode)
    finally:
        await conn.close()


async def _set(
    conn: asyncpg.Connection,
    mode: StorageMode,
    table: RetainedTable,
    window: timedelta,
    settings: Settings,
) -> int:
    before = await read_policy(conn, mode, table)
    # The change and its audit row commit together (`service.audit`).
    async with conn.transaction():
        after = await set_window(conn, mode, table, window, settings.partition_lookahead)
        details = {"window_seconds": window.total_seconds(), "was_seconds": before.window.total_seconds()}
        await record(conn, cli_actor(), AuditAction.RETENTION_SET, f"retention:{table.name}", details)
    where = f"retention job {after.job_id}" if after.job_id is not None else "retention_policies"
    # A plain table's expiry is the same in both modes: its mode is not worth a word.
    in_mode = "" if table.kind is RetentionKind.ROW_EXPIRY else f"{mode} mode, "
    print(
        f"{table.name}: window {format_window(after.window)} (was {format_window(before.window)}), "
        f"{in_mode}stored in {where}"
    )
    return 0


# --- reports ----------------------------------------------------------------------------------


def _table_line(result: TableCleanup) -> str:
    unit = "chunks" if result.mode == "timescale" else "partitions"
    verb = "would drop" if result.dry_run else "dropped"
    rows = "rows not counted" if result.rows is None else f"{result.rows} rows"
    return (
        f"{result.table}: {verb} {len(result.dropped)} {unit} ({rows}) in {result.seconds:.3f}s; "
        f"window {format_window(result.window)}, cutoff {format_time(result.cutoff)}, "
        f"{result.remaining} {unit} left"
    )


def _keys_line(keys: KeyExpiry) -> str:
    verb = "would expire" if keys.dry_run else "expired"
    if keys.cutoff is None:
        return "fcm_dispatch_keys: no dispatch window stored, nothing expires"
    more = "" if keys.complete else " (more remain)"
    return (
        f"fcm_dispatch_keys: {verb} {keys.expired} keys sent before {format_time(keys.cutoff)}"
        f"{more} in {keys.seconds:.3f}s"
    )


def print_cleanup(report: CleanupReport, out: TextIO) -> None:
    """Per table one summary line, then one line per dropped range; failures also on stderr.
    Rollup tables refreshed first (postgres mode) get a line each."""
    if report.rollups is not None:
        for refresh in report.rollups.refreshes:
            if refresh.error is not None:
                print(f"{refresh.rollup}: refresh FAILED: {refresh.error}", file=out)
                _fail(f"{refresh.rollup}: {refresh.error}")
            elif refresh.lo is None:
                print(f"{refresh.rollup}: up to date, watermark {format_time(refresh.watermark)}", file=out)
            else:
                print(
                    f"{refresh.rollup}: refreshed [{format_time(refresh.lo)}, {format_time(refresh.hi)}),"
                    f" {refresh.rows} rows; watermark {format_time(refresh.watermark)}",
                    file=out,
                )
    for result in report.tables:
        if result.error is not None:
            print(f"{result.table}: FAILED: {result.error}", file=out)
            _fail(f"{result.table}: {result.error}")
            continue
        print(_table_line(result), file=out)
        for d in result.dropped:
            rows = "?" if d.rows is None else str(d.rows)
            print(
                f"  {d.name}  [{format_time(d.range_start)}, {format_time(d.range_end)})  {rows} rows",
                file=out,
            )
    if report.keys is not None:
        if report.keys.error is not None:
            print(f"fcm_dispatch_keys: FAILED: {report.keys.error}", file=out)
            _fail(f"fcm_dispatch_keys: {report.keys.error}")
        else:
            print(_keys_line(report.keys), file=out)


def print_audit_expiry(expiry: audit.AuditExpiry, out: TextIO) -> None:
    if expiry.error is not None:
        print(f"{expiry.table}: FAILED: {expiry.error}", file=out)
        _fail(f"{expiry.table}: {expiry.error}")
        return
    verb = "would delete" if expiry.dry_run else "deleted"
    more = "" if expiry.complete else " (more remain)"
    print(
        f"{expiry.table}: {verb} {expiry.deleted} rows created before {format_time(expiry.cutoff)}"
        f"{more} in {expiry.seconds:.3f}s; window {format_window(expiry.window)}",
        file=out,
    )
