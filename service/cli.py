"""`telemetry serve | migrate … | retention … | admin …` (also `python -m service`).

One error path: whatever a command raises ends in `main`, which prints one line
`telemetry <group>: <what failed>; <what to do>` (database URL with its password masked, see
`service.cli_errors`) and returns 2 for usage and configuration, 1 for everything else. The
traceback is logged only with `TELEMETRY_LOG_LEVEL=DEBUG`. Commands that use a database check
it first (`service.db.preflight`): reachable, in a storage mode it can take, and at head for the
groups marked `needs_head` in `GROUPS`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from service import admin, serve
from service.cli_errors import check_url, explain
from service.db.embedded import resolve_database_url
from service.db.preflight import check_database
from service.migrations import verbs as migrate
from service.migrations.verbs import NotConfirmed
from service.retention import cli as retention
from service.settings import Settings, SettingsError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Group:
    """A command group: a module's `register(subparsers)` and `run(args, settings)`, and what
    the group needs first.

    The database is resolved here, once, for every group: the URL from `DATABASE_URL`, or else
    the embedded cluster in `TELEMETRY_DATA_DIR` started (or joined); `run` gets the URL as
    `settings.database_url`. `serve` keeps the embedded cluster as long as it serves and it is
    stopped here on the way out; the one-shot groups leave it running for the next command."""

    register: Callable[[argparse._SubParsersAction], None]  # type: ignore[type-arg]
    run: Callable[[argparse.Namespace, Settings], int]
    # Whether this invocation uses a database (migrate's offline verbs work from the scripts).
    uses_database: Callable[[argparse.Namespace], bool] = lambda args: True
    # Checked here before `run`: reachable, mode, at head. serve and migrate check for themselves
    # (serve waits for the database first; migrate works below head).
    needs_head: bool = False
    # The embedded cluster lives as long as the command: serve.
    stops_embedded: bool = False


def _migrate(args: argparse.Namespace, settings: Settings) -> int:
    """`migrate`, with this error path's wording for the failures a verb reports itself."""
    return migrate.run(args, settings, describe=lambda exc: explain(exc, settings.database_url).message)


GROUPS: dict[str, Group] = {
    "serve": Group(serve.register, serve.run, stops_embedded=True),
    "migrate": Group(migrate.register, _migrate, uses_database=migrate.uses_database),
    "retention": Group(retention.register, retention.run, needs_head=True),
    "admin": Group(admin.register, admin.run, needs_head=True),
}


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="telemetry", description=__doc__)
    parser.add_argument("--version", action=_Version, help="print the version and the schema head, then exit")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in GROUPS.values():
        group.register(sub)
    return parser


@dataclass
class Invocation:
    """What the error path needs to know: the group, and the database URL once resolved."""

    group: str
    url: str | None = None


def _heads() -> frozenset[str]:
    from alembic.script import ScriptDirectory

    from service.migrations.migrator import Migrator

    script: ScriptDirectory = Migrator(settings=Settings(), database_url=None).script()
    return frozenset(script.get_heads())


def _run(args: argparse.Namespace, settings: Settings, inv: Invocation) -> int:
    group = GROUPS[args.command]
    if not group.uses_database(args):
        return group.run(args, settings)
    inv.url = settings.database_url
    check_url(settings.database_url)
    url, cluster = resolve_database_url(settings.database_url, settings.data_dir)
    inv.url = url
    try:
        if group.needs_head:
            asyncio.run(check_database(url, settings, need_head=_heads()))
        return group.run(args, replace(settings, database_url=url))
    finally:
        if cluster is not None and group.stops_embedded:
            cluster.stop()


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
