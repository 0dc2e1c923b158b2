"""Benchmark suite: the guides' performance targets, side by side with baselines.

Brings its own database (an embedded PostgreSQL cluster with TimescaleDB when installed; or
`--database-url`, which must point at a dedicated, migratable database), starts the service as
its own process for each storage mode, enrolls a simulated fleet over the API and drives it
over real HTTP. Prints a console table and writes a markdown report, a PNG latency plot and,
with `--json`, the figures as JSON. `--check` exits 1 when a guide target is missed.

    .venv/bin/python benchmarks/run.py --profile quick --check --json benchmarks/out/quick.json
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    # Run as a script: make `benchmarks` and `service` importable from the repository root.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from benchmarks import fleet_view
from benchmarks.database import EmbeddedCluster, server_versions
from benchmarks.plot import plot
from benchmarks.profiles import PROFILES, Profile
from benchmarks.report import Report
from benchmarks.scenario import ModeResult, ModeRun
from benchmarks.wrk import ensure_wrk

BENCH_DIR = Path(__file__).resolve().parent
MODES = ("timescale", "postgres")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="benchmarks/run.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--profile", choices=sorted(PROFILES), default="quick")
    parser.add_argument(
        "--modes",
        default="auto",
        help="comma-separated storage modes (timescale, postgres); auto: every mode available",
    )
    parser.add_argument(
        "--database-url", help="benchmark this (dedicated) database instead of an embedded one"
    )
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "out", help="output directory (logs, report)")
    parser.add_argument("--json", type=Path, help="write the figures as JSON to this path")
    parser.add_argument("--markdown", type=Path, help="markdown report (default: OUT/report.md)")
    parser.add_argument("--plot", type=Path, help="PNG latency plot (default: OUT/latency.png)")
    parser.add_argument("--check", action="store_true", help="exit 1 when a guide target is missed")
    parser.add_argument("--keep-data", action="store_true", help="keep the embedded cluster's data directory")
    parser.add_argument(
        "--python-generator",
        action="store_true",
        help="drive the single-heartbeat closed loops with the Python generator even when wrk is installed",
    )
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        help="scheduling priority increment for the benchmark and every process it starts (the "
        "service, the database); negative values need root. For a machine shared with other work.",
    )
    overrides = parser.add_argument_group("profile overrides")
    for name, kind, help_text in (
        ("devices", int, "fleet size N"),
        ("connections", int, "concurrent connections C"),
        ("heartbeat-interval", float, "seconds between a device's heartbeats in the fleet phase"),
        ("fleet-seconds", float, "length of the fleet phase"),
        ("ceiling-seconds", float, "length of the closed-loop heartbeat phases"),
        ("half-ceiling-seconds", float, "length of the 50%%-of-ceiling phase"),
        ("batch-seconds", float, "length of the batched-ingest phase"),
        ("overload-seconds", float, "length of the overload phase"),
        ("overload-connections", int, "clients in the overload phase"),
        ("batch-size", int, "heartbeats per request in the batched-ingest phase"),
        ("batch-connections", int, "clients in the batched-ingest phase"),
        ("query-connections", int, "clients in the operator query phases"),
        ("prefill-devices", int, "devices with pre-filled history"),
        ("prefill-interval", float, "seconds between pre-filled heartbeats of one device"),
        ("prefill-expired-hours", float, "hours of history older than the retention window"),
        ("copy-rows", int, "rows in the raw COPY baseline"),
        ("insert-seconds", float, "length of the per-row INSERT baseline"),
        ("query-requests", int, "requests per operator query phase"),
    ):
        overrides.add_argument(f"--{name}", type=kind, help=help_text)
    return parser


def machine_info() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        # Other work on the machine moves CPU ratios: the reference a run records says its load.
        "load_average": round(os.getloadavg()[0], 1),
    }


def requested_modes(text: str, timescale_available: bool) -> list[str]:
    if text == "auto":
        return [m for m in MODES if m != "timescale" or timescale_available]
    modes = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise SystemExit(f"unknown mode(s): {', '.join(unknown)}")
    if "timescale" in modes and not timescale_available:
        print("TimescaleDB is not available here: skipping the timescale mode", file=sys.stderr)
        modes.remove("timescale")
    return modes


async def run(args: argparse.Namespace, profile: Profile, console: Console) -> Report:
    """Every requested mode, one after the other, on one database server. SIGINT or SIGTERM
    cancels the run; the service, the ceiling app and the embedded cluster are stopped on the
    way out (also when SIGINT was ignored by whoever started us, as in a background job)."""
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    if task is not None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
    out: Path = args.out
    started = time.perf_counter()
    machine = machine_info()
    notes: list[str] = []
    results: list[ModeResult] = []
    cluster: EmbeddedCluster | None = None
    wrk = None if args.python_generator else ensure_wrk(lambda line: console.log(line))
    machine["single_heartbeat_generator"] = "wrk" if wrk else "python (aiohttp client)"
    if wrk is None:
        notes.append(
            "The closed-loop single-heartbeat phases (ceiling, saturation, workers2) ran with the Python "
            "load generator, not wrk: their ceiling is bounded by the generator's own CPU."
        )
    try:
        if args.database_url:
            modes = ["auto"] if args.modes == "auto" else requested_modes(args.modes, True)[:1]
            targets = [(m, args.database_url) for m in modes]
            machine["database"] = "given with --database-url"
            machine.update(await server_versions(args.database_url))
        else:
            console.log("starting an embedded PostgreSQL cluster")
            cluster = EmbeddedCluster(keep=args.keep_data)
            modes = requested_modes(args.modes, cluster.timescale_available)
            targets = [(m, "") for m in modes]
            machine["database"] = f"embedded cluster on 127.0.0.1, data in {cluster.data_dir}"
            machine.update(await server_versions(cluster.url))
        for mode, url in targets:
            if cluster is not None:
                url = await cluster.fresh_database(f"bench_{mode}")
            columns = (
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
            )
            with Progress(*columns, console=console, transient=True) as progress:
                runner = ModeRun(
                    mode=mode,
                    database_url=url,
                    profile=profile,
                    out_dir=out,
                    console=console,
                    progress=progress,
                    postmaster_pid=cluster.postmaster_pid if cluster else None,
                    wrk=wrk,
                )
                results.append(await runner.run())
            if cluster is not None and not args.keep_data:
                await cluster.drop_database(f"bench_{mode}")
            if cluster is not None and profile.fleet_view_devices > 0:
                results[-1].fleet_view = await fleet_view_of(cluster, mode, profile, console)
    finally:
        if cluster is not None:
            cluster.close()
    if args.nice:
        notes.append(
            f"Ran at nice {args.nice}: the benchmark, the service and the database were favoured over "
            "other work on the machine; the 'other CPU' column shows what that work still took."
        )
    for r in results:
        ceiling = r.phases.get("ceiling")
        if ceiling is not None and ceiling.cpu["generator_pct"] >= 90:
            notes.append(
                f"{r.mode}: the HTTP ceiling phase pinned the load generator's core "
                f"({ceiling.cpu['generator_pct']:.0f}%): the trivial handler could go faster than one Python "
                "client process can drive it, so the ceiling is a lower bound and the service's share of it "
                "an upper bound."
            )
    command = "python benchmarks/run.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    return Report(profile.as_dict(), command.strip(), machine, results, time.perf_counter() - started, notes)


async def fleet_view_of(
    cluster: EmbeddedCluster, mode: str, profile: Profile, console: Console
) -> dict[str, Any]:
    """The fleet-view figures (`benchmarks/fleet_view.py`) at the profile's fleet size, in a
    database of their own on the same cluster (dropped afterwards)."""
    sizes = argparse.Namespace(
        devices=profile.fleet_view_devices,
        expiring=profile.fleet_view_expiring,
        passes=3,
        compute_samples=30,
        flush_reps=20,
        summary_requests=profile.query_requests // 5,
        list_requests=profile.query_requests // 2,
    )
    console.log(f"{mode}: fleet view at {sizes.devices:,} devices")
    figures = await fleet_view.bench_mode(cluster, mode, sizes)  # type: ignore[arg-type]
    await cluster.drop_database(f"fleet_{mode}")
    return figures


def write_outputs(report: Report, args: argparse.Namespace, console: Console) -> None:
    report.print(console)
    plot_path: Path = args.plot or args.out / "latency.png"
    plot(report.modes, plot_path, f"client-side latency percentiles ({report.profile['name']} profile)")
    md_path: Path = args.markdown or args.out / "report.md"
    report.write_markdown(md_path, os.path.relpath(plot_path, md_path.parent))
    if args.json:
        report.write_json(args.json)
    console.log(f"report: {md_path}; plot: {plot_path}" + (f"; json: {args.json}" if args.json else ""))
    console.log(f"total {report.elapsed_s:.0f} s")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.nice:
        os.nice(args.nice)
    overrides = {k: v for k, v in vars(args).items() if v is not None}
    profile = PROFILES[args.profile].with_overrides(overrides)
    args.out.mkdir(parents=True, exist_ok=True)
    console = Console()
    try:
        report = asyncio.run(run(args, profile, console))
    except asyncio.CancelledError:
        console.log("[red]interrupted; the service and the database were stopped")
        return 130
    write_outputs(report, args, console)
    if args.check and not report.all_targets_met():
        missed = [t.as_dict()["name"] for t in report.targets() if not t.met]
        console.log(f"[red]targets missed: {', '.join(missed) or 'no mode ran'}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
