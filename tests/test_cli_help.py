"""Every command-line entry point answers --help (argparse formats help lazily, so a stray
`%` in a help text only shows up here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    "argv",
    [
        ["benchmarks/run.py", "--help"],
        ["-m", "service", "--help"],
        ["-m", "service", "serve", "--help"],
        ["-m", "service", "migrate", "--help"],
        ["-m", "service", "retention", "--help"],
        ["-m", "service", "admin", "--help"],
    ],
)
def test_help(argv: list[str]) -> None:
    result = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage:")
