"""deploy/ against a running service, with no traffic but Prometheus's own scrapes (as on a
fresh deployment):

* `promtool check metrics` finds nothing to complain about in `/metrics`;
* a real Prometheus (Debian's `prometheus`, its own process with a temporary config and
  storage) scrapes the service, loads deploy/prometheus/alerts.yml, and after two scrapes
  every rule evaluates without error, every dashboard query in deploy/grafana/dashboard.json
  returns series, and every alert expression returns series once its threshold comparison is
  made a `bool` one (so the series it compares exist and match each other's labels: a typo in
  a metric or label name would leave it empty). The exception is the TimescaleDB job alerts in
  postgres mode, where there are no jobs to report on.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from service.db.embedded import free_port
from service.settings import StorageMode
from tests.support.app import Api

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy/prometheus/alerts.yml"
DASHBOARD = ROOT / "deploy/grafana/dashboard.json"
PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
SCRAPE_JOB = "telemetry"  # the job name alerts.yml expects
# Alerts over TimescaleDB jobs: postgres mode has none, so nothing to return.
JOB_METRICS = ("telemetry_retention_job_", "telemetry_retention_foreground_runs")

needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool not installed (Debian package 'prometheus'; scripts/bootstrap.sh installs it as root)",
)
needs_prometheus = pytest.mark.skipif(
    PROMETHEUS is None,
    reason="prometheus not installed (Debian package 'prometheus'; scripts/bootstrap.sh installs it as root)",
)


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def dashboard_queries() -> list[tuple[str, str]]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [(panel["title"], target["expr"]) for panel in panels for target in panel.get("targets", [])]


_OPERATORS = ("==", "!=", ">=", "<=", ">", "<")


def with_bool(expr: str) -> str:
    """`expr` with its one top-level comparison made a `bool` comparison: `a > b` becomes
    `a > bool b`, which returns every matched pair of series (0 or 1) instead of only those that
    pass. Comparisons inside parentheses, brackets, label matchers or strings are left alone."""
    depth, quote, found = 0, "", []
    i = 0
    while i < len(expr):
        c = expr[i]
        if quote:
            quote = "" if c == quote and expr[i - 1] != "\\" else quote
        elif c in "\"'`":
            quote = c
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif depth == 0:
            op = next((o for o in _OPERATORS if expr.startswith(o, i)), None)
            if op is not None:
                found.append(i + len(op))
                i += len(op)
                continue
        i += 1
    assert len(found) == 1, f"expected one top-level comparison in {expr!r}"
    return f"{expr[: found[0]]} bool{expr[found[0] :]}"


def test_with_bool_rewrites_only_the_top_level_comparison() -> None:
    assert with_bool('a{x="1"} > 0.8 * b') == 'a{x="1"} > bool 0.8 * b'
    assert with_bool('(x{s=~"5.."} or 0 * y) / y > 0.05') == '(x{s=~"5.."} or 0 * y) / y > bool 0.05'
    assert with_bool("up == 0") == "up == bool 0"
    with pytest.raises(AssertionError):
        with_bool("rate(x[5m])")


async def metrics_text(api: Api) -> str:
    response = await api.client.get("/metrics")
    assert response.status == 200
    return await response.text()


async def maintenance_exported(api: Api) -> None:
    """Wait for the app's first maintenance round (it starts with the app) to export its gauges."""
    deadline = time.monotonic() + 60
    while "telemetry_retention_problems " not in await metrics_text(api):
        assert time.monotonic() < deadline, "no maintenance round exported retention metrics"
        await asyncio.sleep(0.2)


@needs_promtool
async def test_promtool_check_metrics_is_clean_on_the_service_metrics(api: Api) -> None:
    await maintenance_exported(api)
    text = await metrics_text(api)
    # Mirrored from TimescaleDB, but a counter all the same (it was a gauge named *_total).
    assert "# TYPE telemetry_retention_job_failures_total counter" in text
    result = await asyncio.to_thread(
        subprocess.run, [PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    complaints = (result.stdout + result.stderr).strip()
    assert result.returncode == 0 and not complaints, complaints


@dataclass
class Prometheus:
    url: str
    session: aiohttp.ClientSession

    async def get(self, path: str, **params: str) -> Any:
        async with self.session.get(f"{self.url}{path}", params=params) as response:
            body = await response.json()
        assert response.status == 200 and body["status"] == "success", (path, params, body)
        return body["data"]

    async def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector `expr` evaluates to now (fails on a parse or evaluation error)."""
        data = await self.get("/api/v1/query", query=expr)
        assert data["resultType"] == "vector", (expr, data)
        result: list[dict[str, Any]] = data["result"]
        return result


async def _until(what: str, check: Any, within: float = 60) -> None:
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, f"Prometheus: {what} not within {within:g}s"
        await asyncio.sleep(0.25)


@pytest.fixture
async def prometheus(api: Api, tmp_path: Path) -> AsyncIterator[Prometheus]:
    """Prometheus scraping the `api` app every second (its TestServer listens on a real TCP
    port), evaluating alerts.yml every second; yielded after two scrapes and one evaluation of
    every rule. Stopped (SIGTERM) afterwards."""
    assert PROMETHEUS is not None
    await maintenance_exported(api)
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(RULES)],
                "scrape_configs": [
                    {
                        "job_name": SCRAPE_JOB,
                        "static_configs": [{"targets": [f"127.0.0.1:{api.client.server.port}"]}],
                    }
                ],
            }
        )
    )
    log_path = tmp_path / "prometheus.log"
    with log_path.open("w") as log:
        proc = await asyncio.create_subprocess_exec(
            PROMETHEUS,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        async with aiohttp.ClientSession() as session:
            prom = Prometheus(f"http://127.0.0.1:{port}", session)

            async def ready() -> bool:
                assert proc.returncode is None, log_path.read_text()
                try:
                    async with session.get(f"{prom.url}/-/ready") as response:
                        return response.status == 200
                except aiohttp.ClientConnectionError:
                    return False

            async def scraped_twice() -> bool:
                up = await prom.query(f'count_over_time(up{{job="{SCRAPE_JOB}"}}[1m])')
                now = await prom.query(f'up{{job="{SCRAPE_JOB}"}}')
                return bool(up) and float(up[0]["value"][1]) >= 2 and float(now[0]["value"][1]) == 1

            async def rules_evaluated() -> bool:
                groups = (await prom.get("/api/v1/rules"))["groups"]
                rules = [rule for group in groups for rule in group["rules"]]
                return len(rules) == len(alert_rules()) and all(
                    not rule["lastEvaluation"].startswith("0001-") for rule in rules
                )

            await _until("ready", ready)
            await _until("two scrapes", scraped_twice)
            await _until("every rule evaluated", rules_evaluated)
            yield prom
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 30)


@needs_prometheus
async def test_prometheus_scraping_the_service_evaluates_every_rule_and_dashboard_query(
    prometheus: Prometheus, mode: StorageMode
) -> None:
    groups = (await prometheus.get("/api/v1/rules"))["groups"]
    unhealthy = [
        (rule["name"], rule["health"], rule.get("lastError"))
        for group in groups
        for rule in group["rules"]
        if rule["health"] != "ok"
    ]
    assert not unhealthy

    queries = dashboard_queries()
    assert len(queries) >= 20
    empty = [(title, expr) for title, expr in queries if not await prometheus.query(expr)]
    assert not empty, "dashboard queries without series"

    checked = 0
    for rule in alert_rules():
        expr = " ".join(rule["expr"].split())
        await prometheus.query(expr)  # parses and evaluates as written
        if mode == "postgres" and any(name in expr for name in JOB_METRICS):
            continue
        assert await prometheus.query(with_bool(expr)), f"{rule['alert']}: no series for {expr}"
        checked += 1
    assert checked >= (len(alert_rules()) if mode == "timescale" else 6)
