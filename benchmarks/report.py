"""Turns the measured modes into the guides' targets, the ratios and the goals, and renders
them: a console table (rich), JSON and markdown. Nothing here measures; every figure comes
from a `ModeResult`, and a figure that was not measured is shown as missing, never guessed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from benchmarks import reference
from benchmarks.scenario import FLEET_BATCH_ROWS, ModeResult

HALF_TOLERANCE = 0.98  # an open-loop phase's last requests finish after its schedule ends


@dataclass(frozen=True, slots=True)
class Check:
    """A target (CI gate) or a goal (where we are headed)."""

    name: str
    mode: str
    target: str
    measured: float | None
    unit: str
    met: bool
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": f"{self.name} [{self.mode}]",
            "mode": self.mode,
            "target": self.target,
            "measured": None if self.measured is None else round(self.measured, 4),
            "unit": self.unit,
            "met": self.met,
            "note": self.note,
        }


@dataclass(frozen=True, slots=True)
class Ratio:
    name: str
    mode: str
    value: float | None
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": f"{self.name} [{self.mode}]",
            "mode": self.mode,
            "value": None if self.value is None else round(self.value, 4),
            "detail": self.detail,
        }


def _div(a: float | None, b: float | None) -> float | None:
    if a is None or not b:
        return None
    return a / b


# -- targets as data ---------------------------------------------------------------------------
#
# Each target or goal is one row below: its limit is written once, as a `Bound`, and both the
# text in the report ("< 150 ms with >= 100 concurrent devices") and the check are built from it.
# Adding a target means adding a row.

Figure = Callable[[ModeResult, dict[str, Any]], float | None]
"""A figure of one mode's run; the second argument is the profile (`Profile.as_dict()`)."""

_COMPARE: dict[str, Callable[[float, float], bool]] = {
    "<": lambda value, limit: value < limit,
    "<=": lambda value, limit: value <= limit,
    ">=": lambda value, limit: value >= limit,
}


def _number(value: float) -> str:
    return f"{int(value):,}" if float(value).is_integer() else f"{value:g}"


@dataclass(frozen=True, slots=True)
class Bound:
    """`value <op> limit`; `slack` scales the limit the check applies (never the text)."""

    op: str
    limit: float
    unit: str
    slack: float = 1.0

    def holds(self, value: float | None) -> bool:
        return value is not None and _COMPARE[self.op](value, self.limit * self.slack)

    def text(self) -> str:
        # "0.5x", "50% of ceiling" but "150 ms": a ratio or a share is written against its number.
        gap = "" if self.unit[:1] in ("x", "%") else " "
        return f"{self.op} {_number(self.limit)}{gap}{self.unit}"


@dataclass(frozen=True, slots=True)
class Target:
    """One row of `TARGETS` or `GOALS`: `measured` must satisfy `bound`, each of `also`'s figures
    its own bound (the text joins them: "< 150 ms" + " with" + ">= 100 concurrent devices"), and
    `valid` must hold for the measurement to count at all (a clean run, rows really expired)."""

    name: str
    measured: Figure
    bound: Bound
    also: tuple[tuple[str, Bound, Figure], ...] = ()
    valid: Callable[[ModeResult, dict[str, Any]], bool] = lambda r, p: True
    note: Callable[[ModeResult, dict[str, Any]], str] = lambda r, p: ""

    def text(self) -> str:
        return self.bound.text() + "".join(f"{join} {b.text()}" for join, b, _ in self.also)

    def check(self, r: ModeResult, profile: dict[str, Any]) -> Check:
        value = self.measured(r, profile)
        met = (
            self.bound.holds(value)
            and all(b.holds(figure(r, profile)) for _, b, figure in self.also)
            and self.valid(r, profile)
        )
        return Check(self.name, r.mode, self.text(), value, self.bound.unit, met, self.note(r, profile))


def _p95(phase: str, kind: str) -> Figure:
    def figure(r: ModeResult, _: dict[str, Any]) -> float | None:
        s = r.phase_summary(phase, kind)
        return None if s is None else s.p95_ms

    return figure


def _clean(phase: str, kind: str) -> Callable[[ModeResult, dict[str, Any]], bool]:
    """Every request of the phase's kind was answered 2xx (and there was at least one)."""

    def valid(r: ModeResult, _: dict[str, Any]) -> bool:
        s = r.phase_summary(phase, kind)
        return s is not None and s.ok == s.count and s.count > 0

    return valid


def _fleet_note(kind: str) -> Callable[[ModeResult, dict[str, Any]], str]:
    def note(r: ModeResult, p: dict[str, Any]) -> str:
        fleet = r.phases.get("fleet")
        s = r.phase_summary("fleet", kind)
        return (
            f"{p['devices']} devices over {p['connections']} open connections, max "
            f"{fleet.run.max_in_flight if fleet else 0} requests in flight; "
            f"{0 if s is None else s.count - s.ok} non-2xx"
        )

    return note


def _sql_note(
    key: str, phase: str, wording: str = "the SQL alone: "
) -> Callable[[ModeResult, dict[str, Any]], str]:
    def note(r: ModeResult, _: dict[str, Any]) -> str:
        sql = r.sql.get(key)
        if sql is None or sql.p95_ms is None:
            return ""
        return f"over HTTP ({_generator(r, phase)}); {wording}p95 {sql.p95_ms:.3f} ms"

    return note


def _last100_goal_note(r: ModeResult, p: dict[str, Any]) -> str:
    sql = r.sql.get("last100_sql")
    return f"{r.heartbeat_rows:,} rows in the table; over HTTP ({_generator(r, 'last100')})" + (
        f"; SQL alone p95 {sql.p95_ms:.3f} ms" if sql and sql.p95_ms is not None else ""
    )


def _cleanup_seconds(r: ModeResult, _: dict[str, Any]) -> float | None:
    return None if r.cleanup is None else r.cleanup.cleanup_seconds


def _cleanup_complete(r: ModeResult, _: dict[str, Any]) -> bool:
    c = r.cleanup
    return c is not None and c.expired_rows > 0 and c.rows_left_after == 0


def _cleanup_note(r: ModeResult, _: dict[str, Any]) -> str:
    c = r.cleanup
    return "" if c is None else f"{c.expired_rows:,} rows in {c.chunks_dropped} chunks/partitions; {c.method}"


def _half_rate(r: ModeResult) -> float | None:
    half, phase = r.phase_summary("half", "heartbeat"), r.phases.get("half")
    if half is None or phase is None or phase.run.elapsed <= 0:
        return None
    return half.ok / phase.run.elapsed


def _half_share_pct(r: ModeResult, _: dict[str, Any]) -> float | None:
    ceiling = r.phase_summary("ceiling", "heartbeat")
    share = _div(_half_rate(r), ceiling.rate if ceiling else None)
    return None if share is None else 100 * share


def _half_note(r: ModeResult, _: dict[str, Any]) -> str:
    phase = r.phases.get("half")
    share = _half_share_pct(r, _) or 0
    achieved = f"achieved {_half_rate(r) or 0:,.0f} req/s = {share:.0f}% of the ceiling; "
    if phase is not None and phase.run.extra.get("generator") == "wrk":
        return achieved + (
            f"paced wrk, {phase.run.connections} connections, mean think time "
            f"{phase.run.extra.get('wrk_mean_think_ms', 0):.0f} ms"
        )
    return achieved + f"{phase.run.late if phase else 0} requests sent > 5 ms late"


def _batched_over(baseline: str) -> Figure:
    def figure(r: ModeResult, _: dict[str, Any]) -> float | None:
        base = getattr(r, baseline)
        return _div(r.batched.rows_per_s if r.batched else None, base.rows_per_s if base else None)

    return figure


def _rows_per_s(t: Any) -> float | None:
    return None if t is None else float(t.rows_per_s)


def _saturation_over_ceiling(r: ModeResult, _: dict[str, Any]) -> float | None:
    service, ceiling = r.phase_summary("saturation", "heartbeat"), r.phase_summary("ceiling", "heartbeat")
    return _div(service.rate if service else None, ceiling.rate if ceiling else None)


def _generator(r: ModeResult, phase: str) -> str:
    p = r.phases.get(phase)
    return "—" if p is None else str(p.run.extra.get("generator", "python"))


def _budget_note(r: ModeResult) -> str:
    b = r.cpu_budget
    return (
        f"service {_fmt(b.get('service_cpu_s_per_1000_single'), 3)} s vs trivial "
        f"{_fmt(b.get('trivial_cpu_s_per_1000_requests'), 3)} s of CPU per 1,000 requests"
    )


# The service's CPU per single heartbeat ÷ the trivial handler's per request, as a run recorded
# it (`benchmarks/reference.py`, per profile and mode: 500 connections cost both processes more
# per request than 100). A ratio of CPU times on one machine in one run: it does not move with the
# machine's speed, but other work on the machine moves it by about 10%, so the file says the load.
CPU_REFERENCES = reference.load()


def _cpu_reference(r: ModeResult, p: dict[str, Any]) -> reference.Reference | None:
    return CPU_REFERENCES.get((str(p.get("name")), r.mode))


def _cpu_reference_note(ref: reference.Reference | None) -> str:
    if ref is None:
        return "no reference for this profile (benchmarks/reference.py records one)"
    return ref.note()


def _cleanup_speedup(r: ModeResult, _: dict[str, Any]) -> float | None:
    return None if r.cleanup is None else r.cleanup.speedup


def _overload_queue_full(r: ModeResult, _: dict[str, Any]) -> bool:
    m = r.memory
    return int(m.get("overload_peak_connections", 0)) >= 500 and int(m.get("overload_queue_full_503", 0)) > 0


def _overload_note(r: ModeResult, p: dict[str, Any]) -> str:
    m = r.memory
    return (
        f"{int(m.get('overload_peak_connections', 0))} established connections at peak "
        f"(of {p['overload_connections']} clients); "
        f"{int(m.get('overload_queue_full_503', 0))} x 503 queue_full"
    )


# The guides' targets: the CI gate (`run.py --check`).
TARGETS: tuple[Target, ...] = (
    *(
        Target(
            f"heartbeat write p95 ({label})",
            _p95("fleet", kind),
            Bound("<", 150, "ms"),
            also=((" with", Bound(">=", 100, "concurrent devices"), lambda r, p: p["devices"]),),
            valid=_clean("fleet", kind),
            note=_fleet_note(kind),
        )
        for kind, label in (("heartbeat", "single"), ("heartbeat_batch", f"batched, {FLEET_BATCH_ROWS} rows"))
    ),
    Target(
        "dispatch lookup p95 (GET /v1/dispatches/{id})",
        _p95("lookups", "dispatch_lookup"),
        Bound("<", 5, "ms"),
        valid=_clean("lookups", "dispatch_lookup"),
        note=_sql_note("dispatch_lookup_sql", "lookups"),
    ),
    Target(
        "last-100 heartbeats p95 (GET …/heartbeats?limit=100)",
        _p95("last100", "last100"),
        Bound("<", 100, "ms"),
        valid=_clean("last100", "last100"),
        note=_sql_note("last100_sql", "last100"),
    ),
    Target(
        "cleanup of the expired part of the 2-day window",
        _cleanup_seconds,
        Bound("<", 60, "s"),
        valid=_cleanup_complete,
        note=_cleanup_note,
    ),
)

# Where we are headed: reported, never a gate.
GOALS: tuple[Target, ...] = (
    Target(
        "heartbeat p95 at >= 50% of the HTTP ceiling",
        _p95("half", "heartbeat"),
        Bound("<=", 25, "ms"),
        also=((" at", Bound(">=", 50, "% of ceiling", slack=HALF_TOLERANCE), _half_share_pct),),
        note=_half_note,
    ),
    Target("batched ingest vs raw COPY", _batched_over("raw_copy"), Bound(">=", 0.5, "x")),
    Target(
        "writer flush SQL alone vs raw COPY",
        lambda r, p: _div(r.writer_sql.rows_per_s if r.writer_sql else None, _rows_per_s(r.raw_copy)),
        Bound(">=", 0.8, "x"),
    ),
    Target(
        "single-heartbeat saturation vs the trivial handler",
        _saturation_over_ceiling,
        Bound(">=", 0.5, "x"),
        note=lambda r, p: (
            f"closed loop, {p['connections']} connections, generator: {_generator(r, 'saturation')}"
        ),
    ),
    Target(
        "service CPU per single heartbeat vs the trivial handler's per request",
        lambda r, p: r.cpu_budget.get("single_over_trivial"),
        Bound("<=", 2, "x"),
        note=lambda r, p: _budget_note(r),
    ),
    Target(
        "that CPU ratio vs its recorded reference (a request-path change > 10% shows here)",
        lambda r, p: _div(
            r.cpu_budget.get("single_over_trivial"),
            None if (ref := _cpu_reference(r, p)) is None else ref.single_over_trivial,
        ),
        Bound("<=", 1.1, "x"),
        note=lambda r, p: _cpu_reference_note(_cpu_reference(r, p)),
    ),
    Target("batched ingest vs per-row INSERT", _batched_over("per_row_insert"), Bound(">=", 20, "x")),
    Target(
        "dispatch lookup p95 with >= 1 M dispatches",
        _p95("lookups", "dispatch_lookup"),
        Bound("<=", 1, "ms"),
        also=((",", Bound(">=", 1_000_000, "dispatches"), lambda r, p: r.setup.get("prefill_dispatches")),),
        note=_sql_note("dispatch_lookup_sql", "lookups", wording="SQL alone "),
    ),
    Target(
        "last-100 p95 on >= 10 M heartbeat rows",
        _p95("last100", "last100"),
        Bound("<=", 5, "ms"),
        also=((",", Bound(">=", 10_000_000, "rows"), lambda r, p: r.heartbeat_rows),),
        note=_last100_goal_note,
    ),
    Target(
        "cleanup time, and speed-up over DELETE",
        _cleanup_seconds,
        Bound("<=", 1, "s"),
        also=((" and", Bound(">=", 100, "x DELETE"), _cleanup_speedup),),
        note=lambda r, p: f"(DELETE + VACUUM) ÷ cleanup = {_cleanup_speedup(r, p) or 0:,.1f}x",
    ),
    Target(
        "service RSS with 500 connections open and the write queue full",
        lambda r, p: r.memory.get("overload_peak_mb"),
        Bound("<=", 150, "MB"),
        valid=_overload_queue_full,
        note=_overload_note,
    ),
    Target(
        "fleet summary p95 (GET /v1/fleet/summary)",
        lambda r, p: _fleet_view(r, "summary_ms", "p95"),
        Bound("<=", 50, "ms"),
        note=lambda r, p: (
            f"{_fleet_view(r, 'devices') or 0:,} devices with presence; one snapshot (at most 5 s old) "
            f"costs p95 {_fleet_view(r, 'summary_compute_ms', 'p95') or 0:.1f} ms to compute"
        ),
    ),
    Target(
        "offline list p95 (GET /v1/devices?presence=offline&limit=100)",
        lambda r, p: _fleet_view(r, "offline_ms", "p95"),
        Bound("<=", 10, "ms"),
        note=lambda r, p: (
            f"{_fleet_view(r, 'devices') or 0:,} devices; a page after "
            f"{_fleet_view(r, 'deep_after') or 0:,} offline ones: p95 "
            f"{_fleet_view(r, 'offline_deep_ms', 'p95') or 0:.1f} ms"
        ),
    ),
    Target(
        "maintenance pass recording went_offline for devices expiring at once",
        lambda r, p: _fleet_view(r, "went_offline_s", "max"),
        Bound("<=", 1, "s"),
        note=lambda r, p: (
            f"{_fleet_view(r, 'expiring') or 0:,} devices, worst of 3 passes; with the presence "
            f"counts for the gauges: {_fleet_view(r, 'pass_with_counts_s', 'max') or 0:.2f} s"
        ),
    ),
)


def _presence_ratios(r: ModeResult) -> list[Ratio]:
    """The writer's flush with and without the presence update (fleet-view benchmark)."""
    out = []
    for shape, label in (("backlog", "10 devices x 500 rows"), ("fleet", "5,000 devices x 1 row")):
        ms = _fleet_view(r, "flush_ms", shape)
        if ms:
            out.append(
                Ratio(
                    f"writer flush with ÷ without the presence update, {label} (median ms)",
                    r.mode,
                    _div(ms["with"], ms["without"]),
                    f"{ms['with']:.1f} vs {ms['without']:.1f} ms, alternated on one connection",
                )
            )
    return out


def _fleet_view(r: ModeResult, key: str, sub: str | None = None) -> Any:
    """A figure of the fleet-view benchmark (None when it did not run)."""
    if r.fleet_view is None:
        return None
    value = r.fleet_view.get(key)
    return value.get(sub) if sub is not None and isinstance(value, dict) else value


def ratios(r: ModeResult) -> list[Ratio]:
    ceiling = r.phase_summary("ceiling", "heartbeat")
    service = r.phase_summary("saturation", "heartbeat")
    workers2 = r.phase_summary("workers2", "heartbeat")
    batched = r.batched.rows_per_s if r.batched else None
    copy = r.raw_copy.rows_per_s if r.raw_copy else None
    insert = r.per_row_insert.rows_per_s if r.per_row_insert else None
    c = r.cleanup
    return [
        Ratio(
            "service heartbeat req/s ÷ trivial aiohttp req/s (HTTP ceiling)",
            r.mode,
            _div(service.rate if service else None, ceiling.rate if ceiling else None),
            f"{service.rate if service else 0:,.0f} vs {ceiling.rate if ceiling else 0:,.0f} req/s,"
            " closed loop",
        ),
        Ratio(
            "service CPU per single heartbeat ÷ trivial handler CPU per request",
            r.mode,
            r.cpu_budget.get("single_over_trivial"),
            _budget_note(r),
        ),
        Ratio(
            "serve --workers 2 heartbeat req/s ÷ one worker's (same phase, same generator)",
            r.mode,
            _div(workers2.rate if workers2 else None, service.rate if service else None),
            f"{workers2.rate if workers2 else 0:,.0f} vs {service.rate if service else 0:,.0f} req/s",
        ),
        Ratio(
            "batched ingest rows/s ÷ raw asyncpg COPY rows/s (database ceiling)",
            r.mode,
            _div(batched, copy),
            f"{batched or 0:,.0f} vs {copy or 0:,.0f} rows/s",
        ),
        Ratio(
            "writer flush SQL alone rows/s ÷ raw asyncpg COPY rows/s (cost of the merge)",
            r.mode,
            _div(r.writer_sql.rows_per_s if r.writer_sql else None, copy),
            f"{r.writer_sql.rows_per_s if r.writer_sql else 0:,.0f} vs {copy or 0:,.0f} rows/s",
        ),
        Ratio(
            "batched ingest rows/s ÷ per-row INSERT … ON CONFLICT rows/s (guides' approach)",
            r.mode,
            _div(batched, insert),
            f"{batched or 0:,.0f} vs {insert or 0:,.0f} rows/s",
        ),
        Ratio(
            "DELETE + VACUUM of the expired rows ÷ retention cleanup (time)",
            r.mode,
            None if c is None else c.speedup,
            ""
            if c is None
            else f"{c.delete_job_seconds or 0:.2f} s vs {c.cleanup_seconds:.3f} s "
            f"(in-place DELETE alone, rolled back: {c.delete_seconds or 0:.2f} s)",
        ),
        *_presence_ratios(r),
    ]


# -- rendering ---------------------------------------------------------------------------------


def _fmt(v: float | None, digits: int = 1) -> str:
    if v is None:
        return "—"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.{digits}f}" if abs(v) >= 1 else f"{v:.{digits + 2}f}"


MEASURES: tuple[tuple[str, str, str], ...] = (
    ("fleet", "heartbeat", "heartbeat write, single (fleet mix)"),
    ("fleet", "heartbeat_batch", f"heartbeat write, batched {FLEET_BATCH_ROWS} rows (fleet mix)"),
    ("fleet", "dispatch_create", "dispatch create (fleet mix)"),
    ("fleet", "dispatch_lookup", "dispatch lookup (fleet mix)"),
    ("fleet", "last100", "last-100 heartbeats (fleet mix)"),
    ("fleet", "apk_download", "APK download event (fleet mix)"),
    ("ceiling", "heartbeat", "trivial aiohttp handler, closed loop (HTTP ceiling)"),
    ("saturation", "heartbeat", "heartbeat write, single, closed loop (saturation)"),
    ("workers2", "heartbeat", "heartbeat write, single, closed loop, serve --workers 2"),
    ("half", "heartbeat", "heartbeat write, single, at 50% of the ceiling"),
    ("batched", "heartbeat_batch", "heartbeat write, batched (ingest phase)"),
    ("lookups", "dispatch_lookup", "dispatch lookup, HTTP (alone)"),
    ("last100", "last100", "last-100 heartbeats, HTTP (alone)"),
    ("overload", "overload_batch", "500-row batch under overload (2xx latency)"),
    ("overload", "overload_batch_503", "500-row batch under overload: 503 answers"),
)


def measure_rows(r: ModeResult) -> list[list[str]]:
    rows = []
    for phase, kind, label in MEASURES:
        s = r.phase_summary(phase, kind)
        if s is None:
            continue
        errors = {k: v for k, v in s.statuses.items() if not k.startswith("2")}
        rows.append(
            [
                label,
                str(s.count),
                _fmt(s.p50_ms, 2),
                _fmt(s.p95_ms, 2),
                _fmt(s.p99_ms, 2),
                _fmt(s.rate),
                ", ".join(f"{k}x{v}" for k, v in errors.items()) or "",
            ]
        )
    for key, label in (
        ("dispatch_lookup_sql", "dispatch lookup, SQL via asyncpg"),
        ("last100_sql", "last-100, SQL via asyncpg"),
    ):
        s = r.sql.get(key)
        if s is not None:
            rows.append(
                [label, str(s.count), _fmt(s.p50_ms, 3), _fmt(s.p95_ms, 3), _fmt(s.p99_ms, 3), "", ""]
            )
    return rows


MEASURE_HEADER = ["measure", "n", "p50 ms", "p95 ms", "p99 ms", "req/s", "non-2xx"]


def throughput_rows(r: ModeResult) -> list[list[str]]:
    rows = []
    for label, t in (
        ("batched ingest through the service (rows stored)", r.batched),
        ("raw asyncpg COPY, 5,000-row batches, 2 connections", r.raw_copy),
        (
            "the writer's flush SQL alone (staging COPY + merge), 5,000-row batches, 2 connections",
            r.writer_sql,
        ),
        ("per-row INSERT … ON CONFLICT, 1 transaction/row", r.per_row_insert),
    ):
        if t is not None:
            rows.append([label, f"{t.rows:,}", f"{t.seconds:.1f}", f"{t.rows_per_s:,.0f}"])
    return rows


def phase_rows(r: ModeResult) -> list[list[str]]:
    rows = []
    for name, p in r.phases.items():
        rows.append(
            [
                name,
                f"{p.run.elapsed:.1f}",
                str(p.run.extra.get("generator", "python")).split(" ")[0],
                f"{p.cpu['generator_pct']:.0f}% ({p.cpu.get('generator_cpu_s', 0):.2f} s)",
                f"{p.cpu['server_pct']:.0f}%",
                f"{p.cpu['database_pct']:.0f}%",
                f"{p.cpu['other_pct']:.0f}%",
                f"{p.rss_peak_mb:.0f}",
                str(p.run.max_in_flight),
                p.cpu["limited_by"],
            ]
        )
    return rows


def writer_rows(r: ModeResult) -> list[list[str]]:
    rows = []
    for name, p in r.phases.items():
        w = p.run.extra.get("writer")
        if not w or not w["flushes"]:
            continue
        rows.append(
            [
                name,
                str(w["flushes"]),
                _fmt(w["rows_per_flush"]),
                _fmt(w["flush_ms_mean"], 2),
                str(w["rejected_writes"]),
            ]
        )
    return rows


WRITER_HEADER = ["phase", "flushes", "rows/flush", "flush ms (mean)", "writes refused (503)"]


PHASE_HEADER = [
    "phase",
    "s",
    "generator",
    "generator CPU",
    "server CPU",
    "PostgreSQL CPU",
    "other CPU",
    "RSS MB",
    "in flight",
    "limited by",
]


@dataclass(frozen=True, slots=True)
class TableModel:
    """One table of the report, rendered to the console (rich) and to markdown from the same
    header and rows."""

    title: str
    header: Sequence[str]
    rows: list[list[str]]

    def rich(self) -> Table:
        table = Table(title=self.title, title_justify="left")
        for h in self.header:
            table.add_column(h)
        for row in self.rows:
            table.add_row(*row)
        return table

    def markdown(self) -> str:
        esc = [[c.replace("|", "\\|") for c in row] for row in self.rows]
        lines = ["| " + " | ".join(self.header) + " |", "|" + "---|" * len(self.header)]
        lines += ["| " + " | ".join(row) + " |" for row in esc]
        return "\n".join(lines)


def _check_rows(checks: list[Check]) -> list[list[str]]:
    return [
        [c.name, c.mode, c.target, f"{_fmt(c.measured, 2)} {c.unit}", "yes" if c.met else "NO", c.note]
        for c in checks
    ]


def check_header(kind: str) -> list[str]:
    return ["", "mode", kind, "measured", "met", "note"]


CPU_BUDGET: tuple[tuple[str, str], ...] = (
    ("trivial_cpu_s_per_1000_requests", "trivial handler, CPU s per 1,000 requests (ceiling phase)"),
    ("service_cpu_s_per_1000_single", "service, CPU s per 1,000 single heartbeats (saturation phase)"),
    ("workers2_cpu_s_per_1000_single", "serve --workers 2, CPU s per 1,000 single heartbeats (all workers)"),
    ("service_cpu_s_per_1000_batched_rows", "service, CPU s per 1,000 batched rows (batched phase)"),
    ("single_over_trivial", "ratio: service per single heartbeat ÷ trivial per request"),
    ("service_cpu_us_per_stored_heartbeat", "service, CPU µs per stored single heartbeat"),
    ("database_cpu_us_per_stored_heartbeat", "PostgreSQL, CPU µs per stored single heartbeat"),
)


def budget_rows(r: ModeResult) -> list[list[str]]:
    return [[label, _fmt(r.cpu_budget.get(key), 3)] for key, label in CPU_BUDGET if key in r.cpu_budget]


def mode_tables(r: ModeResult) -> list[TableModel]:
    """The tables of one mode, in report order: latency, ingest, phases, writer, CPU budget."""
    return [
        TableModel(f"{r.mode}: latency and throughput", MEASURE_HEADER, measure_rows(r)),
        TableModel(f"{r.mode}: ingest", ["path", "rows", "s", "rows/s"], throughput_rows(r)),
        TableModel(f"{r.mode}: what each phase used", PHASE_HEADER, phase_rows(r)),
        TableModel(f"{r.mode}: the group-commit writer", WRITER_HEADER, writer_rows(r)),
        TableModel(
            f"{r.mode}: CPU budget (the processes' own counters)", ["measure", "value"], budget_rows(r)
        ),
    ]


@dataclass
class Report:
    profile: dict[str, Any]
    command: str
    machine: dict[str, Any]
    modes: list[ModeResult]
    elapsed_s: float
    notes: list[str]

    def targets(self) -> list[Check]:
        return [t.check(r, self.profile) for r in self.modes for t in TARGETS]

    def ratios(self) -> list[Ratio]:
        return [x for r in self.modes for x in ratios(r)]

    def goals(self) -> list[Check]:
        return [g.check(r, self.profile) for r in self.modes for g in GOALS]

    def all_targets_met(self) -> bool:
        return bool(self.modes) and all(t.met for t in self.targets())

    def summary_tables(self) -> list[TableModel]:
        """Targets, ratios and goals over every mode."""
        return [
            TableModel("The guides' targets", check_header("target"), _check_rows(self.targets())),
            TableModel(
                "Ratios (same run)",
                ["ratio", "mode", "value", "detail"],
                [[x.name, x.mode, _fmt(x.value, 3), x.detail] for x in self.ratios()],
            ),
            TableModel(
                "Where we are headed (goals, not gates)", check_header("goal"), _check_rows(self.goals())
            ),
        ]

    def as_dict(self) -> dict[str, Any]:
        return {
            "profile": self.profile,
            "command": self.command,
            "machine": self.machine,
            "elapsed_s": round(self.elapsed_s, 1),
            "targets": [t.as_dict() for t in self.targets()],
            "ratios": [x.as_dict() for x in self.ratios()],
            "goals": [g.as_dict() for g in self.goals()],
            "modes": {r.mode: r.as_dict() for r in self.modes},
            "notes": self.notes,
        }

    def write_json(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.as_dict(), indent=2, default=str) + "\n")

    def print(self, console: Console) -> None:
        for r in self.modes:
            for table in mode_tables(r):
                console.print(table.rich())
        for table in self.summary_tables():
            console.print(table.rich())

    def markdown(self, plot_name: str | None) -> str:
        targets, ratios, goals = (t.markdown() for t in self.summary_tables())
        m = self.machine
        out = [
            f"# Benchmark report ({self.profile['name']} profile)",
            "",
            f"Command: `{self.command}`  ",
            f"Machine: {m.get('cpus')} CPUs ({m.get('cpu_model')}), {m.get('memory_gb')} GB RAM, "
            f"{m.get('os')}, Python {m.get('python')}  ",
            f"Database: PostgreSQL {m.get('postgresql')}, "
            f"TimescaleDB {m.get('timescaledb') or 'not available'}"
            f" ({m.get('database')})  ",
            f"Total wall time: {self.elapsed_s:.0f} s",
            "",
            "## The guides' targets",
            "",
            targets,
            "",
            "## Ratios measured in the same run",
            "",
            ratios,
            "",
            "## Where we are headed (goals, not CI gates)",
            "",
            goals,
            "",
        ]
        if plot_name:
            out += [f"![latency percentiles]({plot_name})", ""]
        for r in self.modes:
            s = r.setup
            latency, ingest, phases, writer, budget = (t.markdown() for t in mode_tables(r))
            out += [
                f"## {r.mode}",
                "",
                f"{r.heartbeat_rows:,} heartbeat rows in the table after the pre-fill "
                f"({s.get('heartbeat_table_size')}; {s.get('prefill_heartbeat_rows', 0):,} copied in "
                f"{s.get('prefill_copy_s')} s, {s.get('prefill_rows_per_s', 0):,.0f} rows/s; "
                f"{s.get('prefill_dispatches', 0):,} dispatches); "
                f"{s.get('enrolled_devices')} devices enrolled over the API in {s.get('enroll_s')} s. "
                "Service RSS after set-up "
                f"{r.memory.get('after_setup_mb')} MB, peak {r.memory.get('peak_mb')} MB.",
                "",
                latency,
                "",
                ingest,
                "",
                phases,
                "",
                "The group-commit writer, from the service's /metrics:",
                "",
                writer,
                "",
                "CPU budget, from the service's, the trivial handler's and PostgreSQL's own CPU counters:",
                "",
                budget,
                "",
            ]
            if r.cleanup is not None:
                c = r.cleanup
                out += [
                    f"Cleanup: `{c.method}` dropped {c.chunks_dropped} chunks/partitions holding "
                    f"{c.expired_rows:,} rows in {c.cleanup_seconds:.3f} s ({c.rows_left_after} left). "
                    f"`DELETE` of the same rows: {c.copy_delete_seconds or 0:.2f} s + `VACUUM` "
                    f"{c.copy_vacuum_seconds or 0:.2f} s on an indexed plain copy; in place, rolled back: "
                    f"{c.delete_seconds or 0:.2f} s.",
                    "",
                ]
        if self.notes:
            out += ["## Notes", ""] + [f"- {n}" for n in self.notes] + [""]
        return "\n".join(out)

    def write_markdown(self, path: Path, plot_name: str | None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.markdown(plot_name))
