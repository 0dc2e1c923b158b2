"""Console benchmark (issue 25): each console page's server time at 100,000 devices, and its
first render in headless Chromium, per storage mode.

    .venv/bin/python -m benchmarks.console [--devices 100000] [--commands 200000]
        [--downloads 200000] [--requests 100] [--renders 5]

Pre-fill (INSERT … SELECT, as `benchmarks.commands` does it, plus presence as
`benchmarks.fleet_view` has it): `devices` devices with presence (3 % never seen, 20 % offline),
`commands` commands over 90 days (2 % pending: the stuck ones), 10 builds with `downloads`
download events and one build installed on every device; then one device's heartbeats every
10 minutes over the last 40 hours through the API (its charts and timeline), and VACUUM ANALYZE.

Server time: one logged-in client on an in-process service, `requests` sequential GETs per page
after 5 warm-up ones, the pages in turn (round robin), each timed from request to the last byte
read over localhost (so it includes HTTP, not just the handler). First render: Debian's headless
Chromium (`chromium-driver`) logged in, each page loaded `renders` times; the figure is the
page's first contentful paint (`performance.getEntriesByType('paint')`), and `load` its
navigation's loadEventEnd, both from navigation start. Every figure printed is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import asyncpg

from benchmarks import standalone
from benchmarks.commands import prefill
from benchmarks.database import EmbeddedCluster, in_process_service, migrated_database
from benchmarks.fleet_view import _PRESENCE
from benchmarks.latency import p95
from service.admin import create_operator, set_password
from service.settings import StorageMode

NAME, PASSWORD = "bench", "bench console password"
CHART_DEVICE = "dev-1"
PAGES: tuple[tuple[str, str], ...] = (
    ("overview", "/console/"),
    ("overview counts (htmx refresh)", "/console/overview/counts"),
    ("devices", "/console/devices"),
    ("devices, offline", "/console/devices?presence=offline"),
    ("device, 7 d of 1 h", f"/console/devices/{CHART_DEVICE}?span=7d&bucket=1h"),
    ("device, 90 d of 1 d", f"/console/devices/{CHART_DEVICE}?span=90d&bucket=1d"),
    ("commands", "/console/commands"),
    ("commands, stuck", "/console/commands?status=pending&older_than=600"),
    ("commands, action", "/console/commands?action=lock&status=delivered"),
    ("rollouts", "/console/rollouts"),
    ("admin", "/console/admin"),
)
SERVER_TARGET_MS = 100.0
RENDER_TARGET_MS = 1000.0
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')
# Presence for benchmarks.commands' device ids ('dev-<i>', not zero-padded).
_PRESENCE_UNPADDED = _PRESENCE.replace("'dev-' || lpad(i::text, 6, '0')", "'dev-' || i")


def _summary(ms: list[float]) -> dict[str, float]:
    return {"p50": statistics.median(ms), "p95": p95(ms), "max": max(ms), "n": len(ms)}


async def _chart_heartbeats(base: str) -> None:
    now = datetime.now(UTC)
    beats = [
        {
            "ts": (now - timedelta(minutes=10 * k)).isoformat(),
            "status": ("ok", "charging", "idle")[k % 3],
            "battery_pct": 20 + (k * 7) % 80,
            "app_version": "1.10.0" if k < 120 else "1.9.0",
        }
        for k in range(240)
    ]
    headers = {"Authorization": "Bearer dev_bench-1"}
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{base}/v1/heartbeats", json={"heartbeats": beats}, headers=headers) as r:
            assert r.status == 200, await r.text()


async def _log_in(session: aiohttp.ClientSession, base: str) -> None:
    async with session.get(f"{base}/console/login") as r:
        csrf = _CSRF.search(await r.text())
        assert csrf is not None
    form = {"csrf": csrf.group(1), "username": NAME, "password": PASSWORD}
    async with session.post(f"{base}/console/login", data=form, allow_redirects=False) as r:
        assert r.status == 303, await r.text()


async def _server_times(base: str, requests: int) -> dict[str, dict[str, float]]:
    jar = aiohttp.CookieJar(unsafe=True)  # cookies for 127.0.0.1
    samples: dict[str, list[float]] = {name: [] for name, _ in PAGES}
    async with aiohttp.ClientSession(cookie_jar=jar) as session:
        await _log_in(session, base)
        # Round robin, so every page's samples spread over the same stretch of time (the
        # maintenance round's first passes, snapshot refreshes, other load on the machine).
        for i in range(requests + 5):
            for name, path in PAGES:
                t = time.perf_counter()
                async with session.get(base + path, allow_redirects=False) as r:
                    assert r.status == 200, (path, r.status, await r.text())
                    await r.read()
                if i >= 5:
                    samples[name].append((time.perf_counter() - t) * 1000)
    return {name: _summary(ms) for name, ms in samples.items()}


_PAINT = """
const nav = performance.getEntriesByType('navigation')[0];
const paint = performance.getEntriesByType('paint').find(p => p.name === 'first-contentful-paint');
return [paint ? paint.startTime : null, nav.loadEventEnd];
"""


def _renders(base: str, renders: int) -> dict[str, dict[str, Any]]:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.console.browser import start_driver

    driver = start_driver()
    try:
        driver.get(base + "/console/login")
        driver.find_element(By.CSS_SELECTOR, "#username").send_keys(NAME)
        driver.find_element(By.CSS_SELECTOR, "#password").send_keys(PASSWORD)
        driver.find_element(By.CSS_SELECTOR, "#login").click()
        WebDriverWait(driver, 30).until(lambda d: d.current_url.endswith("/console/"))
        out: dict[str, dict[str, Any]] = {}
        for name, path in PAGES:
            if "counts" in path:  # a fragment, not a page
                continue
            fcp, load = [], []
            for _ in range(renders + 1):
                driver.get(base + path)
                # The paint entry is recorded once the browser has painted, which may come after
                # the load event: wait for both.
                paint, loaded = WebDriverWait(driver, 30).until(
                    lambda d: (lambda got: got if got[0] is not None and got[1] > 0 else None)(
                        d.execute_script(_PAINT)
                    )
                )
                fcp.append(paint)
                load.append(loaded)
            # The first load of each page fills the browser's cache of the static files.
            out[name] = {"fcp": _summary(fcp[1:]), "load": _summary(load[1:])}
        return out
    finally:
        driver.quit()


async def bench_mode(cluster: EmbeddedCluster, mode: StorageMode, args: argparse.Namespace) -> dict[str, Any]:
    url = await migrated_database(cluster, f"console_{mode}", mode)
    result: dict[str, Any] = {"mode": mode, "devices": args.devices}
    conn = await asyncpg.connect(url)
    try:
        started = time.perf_counter()
        await prefill(conn, mode, args)
        await conn.execute(_PRESENCE_UNPADDED, args.devices)
        await conn.execute("VACUUM ANALYZE device_presence")
        result["prefill_s"] = time.perf_counter() - started
        await create_operator(conn, NAME)
        await set_password(conn, NAME, PASSWORD)
    finally:
        await conn.close()
    async with in_process_service(url, mode) as (base, _):
        await _chart_heartbeats(base)
        result["server_ms"] = await _server_times(base, args.requests)
        if args.renders:
            result["render_ms"] = await asyncio.to_thread(_renders, base, args.renders)
    return result


def main() -> int:
    parser = standalone.parser(
        __doc__, check=True, devices=100_000, commands=200_000, downloads=200_000, requests=100
    )
    parser.add_argument("--renders", type=int, default=5, help="0: no browser")
    args = parser.parse_args()
    results = standalone.run(args, bench_mode)
    print(f"{args.devices:,} devices, {args.commands:,} commands, {args.downloads:,} download events\n")
    rows = [standalone.Row("pre-fill, s", lambda r: f"{r['prefill_s']:.0f}")]
    missed = 0
    for name, _ in PAGES:
        rows.append(
            standalone.Row(
                f"{name}: server p50 / p95 / max ms",
                lambda r, n=name: "{p50:.1f} / {p95:.1f} / {max:.1f}".format(**r["server_ms"][n]),
                f"p95 ≤ {SERVER_TARGET_MS:.0f}",
            )
        )
        missed += sum(r["server_ms"][name]["p95"] > SERVER_TARGET_MS for r in results)
        if all(name in r.get("render_ms", {}) for r in results) and args.renders:
            rows.append(
                standalone.Row(
                    f"{name}: first contentful paint p50 / max ms (load p50)",
                    lambda r, n=name: (
                        "{p50:.0f} / {max:.0f}".format(**r["render_ms"][n]["fcp"])
                        + " ({:.0f})".format(r["render_ms"][n]["load"]["p50"])
                    ),
                    f"≤ {RENDER_TARGET_MS:.0f}",
                )
            )
            missed += sum(r["render_ms"][name]["fcp"]["max"] > RENDER_TARGET_MS for r in results)
    standalone.print_table(results, rows)
    print(f"\ntargets missed: {missed}")
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
