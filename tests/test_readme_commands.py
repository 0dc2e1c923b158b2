"""Every `telemetry …` line of README.md's code blocks runs as typed, with its placeholders filled.

The lines run in order, as a user would paste them, in a shell whose PATH holds this virtualenv,
against a database at head with a `telemetry serve` on it (for `migrate deploy`). Placeholders:
`REV` (the head revision), `FILE` (a file in a scratch directory), `URL` (that server's
`/health`). The curl session is run by tests/test_readme_session.py.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory

from tests.support.cli import child_env, run_bash
from tests.support.serve_process import serving

ROOT = Path(__file__).resolve().parent.parent
HEAD = ScriptDirectory.from_config(Config(str(ROOT / "alembic.ini"))).get_current_head()


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    lines: list[str] = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        lines += [line.strip() for line in block.splitlines() if line.strip().startswith("telemetry ")]
    return lines


def fill(line: str, *, health_url: str) -> str:
    placeholders = {"REV": HEAD, "FILE": "backup.dump", "URL": health_url}
    return re.sub(r"\b(REV|FILE|URL)\b", lambda m: placeholders[m[1]], line)


@pytest.fixture
def server(db_url: str, mode: str) -> Iterator[tuple[int, dict[str, str]]]:
    env = child_env()
    env |= {
        "DATABASE_URL": db_url,
        "TELEMETRY_STORAGE_MODE": mode,
        "TELEMETRY_LOG_LEVEL": "WARNING",
        "PATH": f"{Path(sys.executable).parent}:{env['PATH']}",
    }
    with serving(env, "--no-migrate") as port:
        yield port, env


def test_readme_has_the_command_lines() -> None:
    lines = readme_commands()
    assert len(lines) >= 14
    assert any(line.startswith("telemetry migrate deploy") for line in lines)
    assert any(line.startswith("telemetry retention run") for line in lines)


def test_every_telemetry_line_in_readme_runs_as_typed(
    server: tuple[int, dict[str, str]], tmp_path: Path
) -> None:
    port, env = server
    failed: list[str] = []
    for line in readme_commands():
        command = fill(line, health_url=f"http://127.0.0.1:{port}/health")
        result = run_bash(command, env, timeout=180, cwd=tmp_path)
        if result.returncode != 0:
            failed.append(f"{command}\n  exit {result.returncode}: {result.stderr.strip()}")
    assert not failed, "\n".join(failed)
    assert (tmp_path / "upgrade.sql").read_text().count("create_hypertable") >= 3
    assert (tmp_path / "backup.dump").read_bytes()[:5] == b"PGDMP"
