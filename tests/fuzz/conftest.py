from __future__ import annotations

import pytest

from tests.fuzz.stats import STATS


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    line = STATS.summary()
    if line:
        terminalreporter.write_line(line)
