"""Figures of the fuzzing runs, summed over the session and printed at its end."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class FuzzStats:
    requests: Counter[str] = field(default_factory=Counter)  # per storage mode
    server_errors: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    seconds: Counter[str] = field(default_factory=Counter)

    def summary(self) -> str | None:
        if not self.requests:
            return None
        per_mode = ", ".join(
            f"{mode}: {n} requests, {self.server_errors[mode]} 5xx, {self.seconds[mode]:.1f} s"
            for mode, n in sorted(self.requests.items())
        )
        statuses = " ".join(f"{status}x{n}" for status, n in sorted(self.statuses.items()))
        return f"schemathesis fuzzing: {per_mode}; statuses {statuses}"


STATS = FuzzStats()
