"""deploy/prometheus: `promtool check rules` accepts the alert rules, `promtool test rules` runs
their unit tests, and every alert has both a case where it fires and one where it stays quiet.
promtool comes from Debian's `prometheus` package (scripts/bootstrap.sh installs it as root)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy/prometheus/alerts.yml"
UNIT_TESTS = sorted((ROOT / "deploy/prometheus/tests").glob("*.yml"))

needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool not installed (Debian package 'prometheus'; scripts/bootstrap.sh installs it as root)",
)


def alert_names() -> list[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule["alert"] for group in groups for rule in group["rules"] if "alert" in rule]


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, cwd=RULES.parent, timeout=120)


@needs_promtool
def test_promtool_accepts_the_rules() -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_names())} rules found" in result.stdout


@needs_promtool
def test_promtool_unit_tests_of_the_rules_pass() -> None:
    assert UNIT_TESTS
    result = promtool("test", "rules", *map(str, UNIT_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(UNIT_TESTS), result.stdout


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    cases: list[dict[str, Any]] = [
        case
        for path in UNIT_TESTS
        for test in yaml.safe_load(path.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
    ]
    names = alert_names()
    assert len(names) >= 10
    for name in names:
        own = [case for case in cases if case["alertname"] == name]
        assert any(case.get("exp_alerts") for case in own), f"{name}: no case where it fires"
        assert any(not case.get("exp_alerts") for case in own), f"{name}: no case where it stays quiet"
