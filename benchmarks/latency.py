"""Latency samples and their summaries (p50/p95/p99, throughput), in milliseconds."""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True, slots=True)
class Summary:
    """One kind of request in one phase. Latencies of successful (2xx) requests only (503s are
    summarized apart); `rate` counts every answered request per second of the phase."""

    count: int
    ok: int
    statuses: dict[str, int]
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    rate: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "ok": self.ok,
            "statuses": self.statuses,
            "p50_ms": self.p50_ms,
            "p95_ms": self.p95_ms,
            "p99_ms": self.p99_ms,
            "max_ms": self.max_ms,
            "rate": self.rate,
        }


@dataclass
class Recorder:
    """Latencies (seconds) and status codes per kind of request."""

    latencies: dict[str, list[float]] = field(default_factory=dict)
    statuses: dict[str, Counter[str]] = field(default_factory=dict)
    refused: dict[str, list[float]] = field(default_factory=dict)

    def record(self, kind: str, seconds: float, status: int | str) -> None:
        self.statuses.setdefault(kind, Counter())[str(status)] += 1
        if isinstance(status, int) and 200 <= status < 300:
            self.latencies.setdefault(kind, []).append(seconds)
        elif status == 503:
            self.refused.setdefault(kind, []).append(seconds)

    def refused_summary(self, kind: str, elapsed: float) -> Summary | None:
        """Latencies of the 503 answers (how fast a client learns to back off)."""
        samples = self.refused.get(kind)
        if not samples:
            return None
        return summarize(samples, Counter({"503": len(samples)}), elapsed)

    def summary(self, kind: str, elapsed: float) -> Summary:
        return summarize(self.latencies.get(kind, []), self.statuses.get(kind, Counter()), elapsed)

    def summaries(self, elapsed: float) -> dict[str, Summary]:
        return {kind: self.summary(kind, elapsed) for kind in sorted(self.statuses)}

    def samples_ms(self, kind: str) -> list[float]:
        return [s * 1000.0 for s in self.latencies.get(kind, [])]


def summarize(latencies: list[float], statuses: Counter[str], elapsed: float) -> Summary:
    count = sum(statuses.values())
    ok = len(latencies)
    if latencies:
        ms = np.asarray(latencies, dtype=np.float64) * 1000.0
        p50, p95, p99 = (float(v) for v in np.percentile(ms, [50, 95, 99]))
        top: float | None = float(ms.max())
    else:
        p50 = p95 = p99 = top = None
    return Summary(
        count=count,
        ok=ok,
        statuses=dict(sorted(statuses.items())),
        p50_ms=p50,
        p95_ms=p95,
        p99_ms=p99,
        max_ms=top,
        rate=count / elapsed if elapsed > 0 else 0.0,
    )


def p95(values: list[float]) -> float:
    """The 95th percentile of `values`, in their unit (the feature benchmarks' one definition)."""
    return statistics.quantiles(values, n=20)[-1]


def percentile_curve(samples_ms: list[float], points: list[float]) -> list[float]:
    if not samples_ms:
        return []
    return [float(v) for v in np.percentile(np.asarray(samples_ms), points)]
