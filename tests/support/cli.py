"""`telemetry` as a child process, the way an operator runs it: an environment that holds only
the settings a test gives it, and the command's exit code and output."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def child_env(**settings: str) -> dict[str, str]:
    """This process's environment without any `TELEMETRY_*` variable or `DATABASE_URL`, plus
    `settings`: a child sees what the test sets, never what the shell running the tests had."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TELEMETRY_") and k != "DATABASE_URL"}
    return env | settings


def run_telemetry(
    argv: list[str], env: dict[str, str], timeout: float = 300, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """`python -m service ARGV` to its end, stdin closed (a prompt fails rather than waits)."""
    return _run([sys.executable, "-m", "service", *argv], env, timeout, cwd)


def run_bash(script: str, env: dict[str, str], timeout: float, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`script` as README's readers run it: bash, stopping at the first failing command."""
    return _run(["bash", "-euo", "pipefail", "-c", script], env, timeout, cwd)


def _run(
    argv: list[str], env: dict[str, str], timeout: float, cwd: Path | None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, cwd=cwd, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, timeout=timeout
    )
