"""`telemetry serve | migrate … | retention … | admin …` (also `python -m service`).

One error path: whatever a command raises ends in `main`, which prints one line
`telemetry <group>: <what failed>; <what to do>` (database URL with its password masked, see
`service.cli_errors`) and returns 2 for usage and configuration, 1 for everything else. The
traceback is logged only with `TELEMETRY_LOG_LEVEL=DEBUG`. Commands that use a database check
it first (`service.db.preflight`): reachable, in a storage mode it can take, and at head for the
groups in `_NEEDS_HEAD`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from service.admin import register as register_admin
from service.cli_errors import check_url, explain
from service.db.embedded import resolve_database_url
from service.db.preflight import check_database
from service.migrations import verbs as migrate_verbs
from service.migrations.verbs import NotConfirmed
from service.settings import Settings, SettingsError

log = logging.getLogger(__name__)


class _Version(argparse.Action):
    """`--version`: the package version and the schema head this code migrates to."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *_: object, **__: object) -> None:
        try:
            package = version("device-telemetry")
        except PackageNotFoundError:
            package = "unknown (not installed)"
        print(f"telemetry {package}, schema head {', '.join(sorted(_heads()))}")
        parser.exit()


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="telemetry", description=__doc__)
    parser.add_argument("--version", action=_Version, help="print the version and the schema head, then exit")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the HTTP service")
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=None)
    serve.add_argument("--no-migrate", action="store_true", help="do not run migrations at start")
    serve.add_argument(
        "--workers", type=_positive, default=1, help="processes sharing the port (SO_REUSEPORT); default 1"
    )

    migrate_verbs.register(sub)

    retention = sub.add_parser("retention", help="retention windows and cleanup")
    rverbs = retention.add_subparsers(dest="verb", required=True)
    rverbs.add_parser("show", help="per-table retention state")
    rset = rverbs.add_parser("set", help="change a table's window")
    rset.add_argument("table")
    rset.add_argument("window", help="e.g. 2d, 36h, 90m, or seconds")
    rrun = rverbs.add_parser("run", help="run retention now (the cron-able cleanup job)")
    rrun.add_argument("table", nargs="?")
    rrun.add_argument("--dry-run", action="store_true")
    rverbs.add_parser(
        "check", help="exit 1, one line per problem, unless every window holds and every job succeeds"
    )

    register_admin(sub)
    return parser


# Verbs that read the operators', enrollment and retention tables need the schema this code
# was written for.
_NEEDS_HEAD = {"admin", "retention"}


@dataclass
class Invocation:
    """What the error path needs to know: the group, and the database URL once resolved."""

    group: str
    url: str | None = None


def _heads() -> frozenset[str]:
    from alembic.script import ScriptDirectory

    from service.migrations.commands import Migrator

    script: ScriptDirectory = Migrator(settings=Settings(), database_url=None).script()
    return frozenset(script.get_heads())


def _database(settings: Settings, inv: Invocation) -> str:
    inv.url = settings.database_url
    check_url(settings.database_url)
    url, _ = resolve_database_url(settings.database_url, settings.data_dir)
    inv.url = url
    return url


def _run(args: argparse.Namespace, settings: Settings, inv: Invocation) -> int:
    match args.command:
        case "migrate":
            if not (getattr(args, "sql", False) or args.verb in migrate_verbs.OFFLINE_VERBS):
                _database(settings, inv)
            return migrate_verbs.run(args, settings, inv.url)
        case "serve":
            from service import event_loop
            from service.serve import serve

            inv.url = settings.database_url
            check_url(settings.database_url)
            return event_loop.run(
                serve(
                    settings,
                    host=args.host,
                    port=args.port,
                    migrate=not args.no_migrate,
                    workers=args.workers,
                    invocation=inv,
                ),
                settings.event_loop,
            )
        case "retention":
            from service.retention.commands import run_retention_command as run
        case "admin":
            from service.admin import run_admin_command as run
        case _:
            raise ValueError(f"unknown command {args.command!r}")
    url = _database(settings, inv)
    need_head = _heads() if args.command in _NEEDS_HEAD else None
    asyncio.run(check_database(url, settings, need_head=need_head))
    return run(args, settings)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    inv = Invocation(group=args.command)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"telemetry {inv.group}: configuration error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    try:
        return _run(args, settings, inv)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # stdout closed by its reader (`| head`): not an error worth a line.
        sys.stdout = open(os.devnull, "w")
        return 1
    except NotConfirmed as exc:
        print(f"telemetry {inv.group}: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:
        # Alembic's env.py stops with a message (e.g. offline SQL without a mode).
        if not isinstance(exc.code, str):
            raise
        print(f"telemetry {inv.group}: {exc.code}", file=sys.stderr)
        return 2
    except Exception as exc:
        if logging.getLogger().isEnabledFor(logging.DEBUG):
            log.exception("telemetry %s failed", inv.group)
        found = explain(exc, inv.url)
        print(f"telemetry {inv.group}: {found.message}", file=sys.stderr)
        return found.code


if __name__ == "__main__":
    raise SystemExit(main())
