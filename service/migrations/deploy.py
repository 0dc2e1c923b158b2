"""`telemetry migrate deploy`: the guide's deployment workflow as one command.

backup (when asked) → upgrade to head → poll the health URL until the service reports ready at
the new head → done (exit 0). When the upgrade fails, or the service is not ready in time, the
schema goes back to the revision it started from and the restore command for the backup is
printed (exit 1). The backup is never restored automatically: rows written since would be lost.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from service.db.preflight import read_revisions
from service.migrations.backup import restore_command, write_backup
from service.migrations.migrator import Migrator
from service.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class HealthReading:
    ready: bool
    detail: str


def read_health(url: str, heads: frozenset[str], timeout: float = 2.0) -> HealthReading:
    """Ready means: 200, `ready: true`, `schema: head` and (when reported) revisions == heads."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    except (OSError, ValueError) as exc:
        return HealthReading(False, f"no answer ({exc})")
    try:
        doc = json.loads(body)
    except ValueError:
        return HealthReading(False, f"HTTP {status}, not JSON")
    if not isinstance(doc, dict):
        return HealthReading(False, f"HTTP {status}, unexpected body")
    revisions = doc.get("revisions")
    at_head = doc.get("schema") == "head" and (revisions is None or frozenset(revisions) == heads)
    ready = status == 200 and doc.get("ready") is True and at_head
    return HealthReading(ready, f"HTTP {status}, ready={doc.get('ready')}, schema={doc.get('schema')}")


def wait_until_ready(url: str, heads: frozenset[str], timeout: float) -> HealthReading:
    deadline = time.monotonic() + timeout
    reading = HealthReading(False, "not polled")
    while time.monotonic() < deadline:
        reading = read_health(url, heads, timeout=min(2.0, max(0.1, deadline - time.monotonic())))
        if reading.ready:
            return reading
        time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
    return reading


def deploy(
    migrator: Migrator,
    *,
    url: str,
    settings: Settings,
    health_url: str,
    backup: Path | None,
    timeout: float,
    describe: Callable[[BaseException], str],
) -> int:
    """`describe` words a failed upgrade as the CLI's error path does (`service.cli` passes
    it down: this layer does not know every error a command can meet)."""
    heads = frozenset(migrator.script().get_heads())
    start = read_revisions(url, settings)
    if len(start) > 1:
        raise ValueError("the database has several heads; merge them before deploying")
    start_rev = next(iter(start)) if start else "base"
    if backup is not None:
        write_backup(url, backup)
        print(f"backup written to {backup}", file=sys.stderr)
    failure: str
    try:
        migrator.upgrade("head")
    except Exception as exc:
        failure = f"upgrade failed: {describe(exc)}"
    else:
        reading = wait_until_ready(health_url, heads, timeout)
        if reading.ready:
            print(f"deployed {', '.join(sorted(heads))}: {health_url} reports ready", file=sys.stderr)
            return 0
        at = ", ".join(sorted(heads))
        failure = f"{health_url} did not report ready at {at} within {timeout:g}s ({reading.detail})"
    print(f"telemetry migrate: {failure}; rolling back to {start_rev}", file=sys.stderr)
    if read_revisions(url, settings) != start:
        migrator.downgrade(start_rev)
    print(f"telemetry migrate: schema back at {start_rev}", file=sys.stderr)
    if backup is not None:
        print(f"to restore the backup instead: {restore_command(url, backup)}", file=sys.stderr)
    return 1
