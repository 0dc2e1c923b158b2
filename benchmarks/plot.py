"""The latency plot: percentile curves of the client-side latencies, one panel per mode."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from benchmarks.latency import percentile_curve
from benchmarks.scenario import ModeResult

CURVES: tuple[tuple[str, str, str], ...] = (
    ("fleet", "heartbeat", "heartbeat (fleet mix)"),
    ("fleet", "heartbeat_batch", "batched 20 rows (fleet mix)"),
    ("half", "heartbeat", "heartbeat at 50% of ceiling"),
    ("batched", "heartbeat_batch", "batched ingest phase"),
    ("lookups", "dispatch_lookup", "dispatch lookup"),
    ("last100", "last100", "last-100 heartbeats"),
)
POINTS = [float(p) for p in range(1, 100)] + [99.5, 99.9]


def plot(modes: list[ModeResult], path: Path, title: str) -> None:
    fig, axes = plt.subplots(1, max(len(modes), 1), figsize=(6.5 * max(len(modes), 1), 4.8), squeeze=False)
    for ax, r in zip(axes[0], modes, strict=False):
        for phase, kind, label in CURVES:
            p = r.phases.get(phase)
            if p is None:
                continue
            samples = [s * 1000.0 for s in p.run.recorder.latencies.get(kind, [])]
            curve = percentile_curve(samples, POINTS)
            if curve:
                ax.plot(POINTS, curve, label=label)
        for key, label in (("dispatch_lookup_sql", "dispatch lookup, SQL"), ("last100_sql", "last-100, SQL")):
            samples = r.samples_ms.get(key, [])
            curve = percentile_curve(samples, POINTS)
            if curve:
                ax.plot(POINTS, curve, linestyle="--", label=label)
        for y, label in ((150, "150 ms write target"), (25, "25 ms goal"), (5, "5 ms lookup target")):
            ax.axhline(y, color="grey", linewidth=0.7, linestyle=":")
            ax.text(1, y * 1.06, label, fontsize=7, color="grey")
        ax.set_yscale("log")
        ax.set_xlabel("percentile")
        ax.set_ylabel("latency, ms (client side)")
        ax.set_title(f"{r.mode}")
        ax.grid(True, which="both", linewidth=0.3)
        ax.legend(fontsize=7, loc="upper left")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
