"""The recorded CPU reference: a run's "service CPU per single heartbeat ÷ trivial handler per
request", kept per profile and mode in `benchmarks/reference.json` with where it came from.

The report compares each run's ratio with it (a goal row: a request-path change that costs more
than 10% shows there). The figure is data a run measured, not a constant typed into code: it is
recorded from a run's `--json` output by

    .venv/bin/python benchmarks/reference.py benchmarks/out/quick.json

which stores that run's ratio for each of its modes with the commit, date and load average, so
the file says which measurement every reference is.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REFERENCE_FILE = Path(__file__).with_name("reference.json")


@dataclass(frozen=True, slots=True)
class Reference:
    single_over_trivial: float
    source: str

    def note(self) -> str:
        return f"reference {self.single_over_trivial:g}x ({self.source})"


def load(path: Path = REFERENCE_FILE) -> dict[tuple[str, str], Reference]:
    """(profile, mode) → reference; empty when the file is absent."""
    if not path.exists():
        return {}
    raw: dict[str, dict[str, dict[str, Any]]] = json.loads(path.read_text())
    return {
        (profile, mode): Reference(float(entry["single_over_trivial"]), str(entry["source"]))
        for profile, modes in raw.items()
        for mode, entry in modes.items()
    }


def _commit() -> str:
    argv = ["git", "rev-parse", "--short", "HEAD"]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    return done.stdout.strip() or "unknown commit"


def record(run: dict[str, Any], path: Path = REFERENCE_FILE) -> dict[str, Reference]:
    """Stores the run's ratio per mode under its profile; returns what was stored."""
    profile = str(run["profile"]["name"])
    load_avg = run.get("machine", {}).get("load_average")
    when = datetime.now(UTC).strftime("%Y-%m-%d")
    stored: dict[str, Reference] = {}
    for mode, result in run["modes"].items():
        ratio = result.get("cpu_budget", {}).get("single_over_trivial")
        if ratio is None:
            continue
        source = f"{profile} profile, {when}, commit {_commit()}"
        if load_avg is not None:
            source += f", load average {load_avg}"
        stored[mode] = Reference(round(float(ratio), 2), source)
    raw: dict[str, dict[str, dict[str, Any]]] = json.loads(path.read_text()) if path.exists() else {}
    raw.setdefault(profile, {}).update({mode: asdict(ref) for mode, ref in stored.items()})
    path.write_text(json.dumps(raw, indent=2, sort_keys=True) + "\n")
    return stored


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_json", type=Path, help="a run's --json output")
    args = parser.parse_args()
    try:
        run = json.loads(args.run_json.read_text())
    except (OSError, ValueError) as exc:
        print(f"reference: cannot read {args.run_json}: {exc}", file=sys.stderr)
        return 2
    stored = record(run)
    if not stored:
        print(f"reference: {args.run_json} holds no CPU ratio (no saturation phase?)", file=sys.stderr)
        return 1
    for mode, ref in stored.items():
        print(f"{mode}: {ref.note()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
