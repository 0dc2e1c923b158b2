"""What every benchmark module run on its own shares: its command line (`--modes`, `--json`),
one throwaway cluster for all its storage modes, and the markdown table it prints for RESULTS.md.

    parser = standalone.parser(__doc__)
    parser.add_argument("--devices", type=int, default=10_000)
    args = parser.parse_args()
    results = standalone.run(args, bench_mode)
    standalone.print_table(results, [standalone.Row("pre-fill, s", lambda r: f"{r['prefill_s']:.0f}")])
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.database import EmbeddedCluster, each_mode
from benchmarks.report import Bound
from service.settings import StorageMode

Figures = dict[str, Any]


def parser(doc: str | None, *, check: bool = False, **counts: int) -> argparse.ArgumentParser:
    """The module's docstring as its help, the options every module has, `--check` (exit 1 when
    a target is missed) when asked, and one integer option per keyword in `counts`
    (`raw_devices=1000` is `--raw-devices`, default 1000)."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--modes", default="auto", help="comma-separated: postgres, timescale (default: both)")
    p.add_argument("--json", type=Path, help="write the figures as JSON to this path")
    for name, default in counts.items():
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=default)
    if check:
        p.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    return p


def run(
    args: argparse.Namespace,
    bench_mode: Callable[[EmbeddedCluster, StorageMode, argparse.Namespace], Awaitable[Figures]],
) -> list[Figures]:
    """`bench_mode` once per storage mode asked for, in one throwaway cluster; the figures are
    also written to `--json` when given."""
    results = asyncio.run(each_mode(lambda cluster, mode: bench_mode(cluster, mode, args), args.modes))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
    return results


@dataclass(frozen=True, slots=True)
class Row:
    """One measure: its label, the cell it shows for a mode's figures, and its target if any."""

    label: str
    cell: Callable[[Figures], str]
    target: str = ""


def print_table(results: Sequence[Figures], rows: Sequence[Row]) -> None:
    """A markdown table, one column per mode (and a target column when a row has one)."""
    with_target = any(row.target for row in rows)
    modes = " | ".join(r["mode"] for r in results)
    print("| measure | target | " + modes + " |" if with_target else "| measure | " + modes + " |")
    print("|---|" + ("---|" if with_target else "") + "---|" * len(results))
    for row in rows:
        target = f" {row.target} |" if with_target else ""
        print(f"| {row.label} |{target} " + " | ".join(row.cell(r) for r in results) + " |")


def print_targets(
    results: Sequence[Figures],
    targets: Sequence[tuple[str, Bound, Callable[[Figures], float]]],
    digits: str = ".3g",
) -> int:
    """A markdown table of `targets` (name, bound, figure), one column per mode; how many of
    the cells missed their bound."""
    missed = 0
    print("\n| target | bound | " + " | ".join(r["mode"] for r in results) + " |")
    print("|---|---|" + "---|" * len(results))
    for name, bound, figure in targets:
        cells = []
        for r in results:
            value = figure(r)
            met = bound.holds(value)
            missed += not met
            cells.append(f"{value:{digits}} {bound.unit} {'met' if met else 'MISSED'}")
        print(f"| {name} | {bound.text()} | " + " | ".join(cells) + " |")
    return missed
