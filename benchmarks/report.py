"""Turns the measured modes into the guides' targets, the ratios and the goals, and renders
them: a console table (rich), JSON and markdown. Nothing here measures; every figure comes
from a `ModeResult`, and a figure that was not measured is shown as missing, never guessed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

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


def _lt(value: float | None, limit: float) -> bool:
    return value is not None and value < limit


def _le(value: float | None, limit: float) -> bool:
    return value is not None and value <= limit


def _div(a: float | None, b: float | None) -> float | None:
    if a is None or not b:
        return None
    return a / b


def targets(r: ModeResult, devices: int, connections: int) -> list[Check]:
    out: list[Check] = []
    fleet = r.phases.get("fleet")
    in_flight = fleet.run.max_in_flight if fleet else 0
    for kind, label in (("heartbeat", "single"), ("heartbeat_batch", f"batched, {FLEET_BATCH_ROWS} rows")):
        s = r.phase_summary("fleet", kind)
        clean = s is not None and s.ok == s.count and s.count > 0
        out.append(
            Check(
                f"heartbeat write p95 ({label})",
                r.mode,
                "< 150 ms with >= 100 concurrent devices",
                None if s is None else s.p95_ms,
                "ms",
                _lt(None if s is None else s.p95_ms, 150.0) and devices >= 100 and clean,
                f"{devices} devices over {connections} open connections, max {in_flight} requests in flight; "
                f"{0 if s is None else s.count - s.ok} non-2xx",
            )
        )
    for phase, kind, name, limit, sql_key in (
        (
            "lookups",
            "dispatch_lookup",
            "dispatch lookup p95 (GET /v1/dispatches/{id})",
            5.0,
            "dispatch_lookup_sql",
        ),
        ("last100", "last100", "last-100 heartbeats p95 (GET …/heartbeats?limit=100)", 100.0, "last100_sql"),
    ):
        s = r.phase_summary(phase, kind)
        sql = r.sql.get(sql_key)
        clean = s is not None and s.ok == s.count and s.count > 0
        out.append(
            Check(
                name,
                r.mode,
                f"< {limit:g} ms",
                None if s is None else s.p95_ms,
                "ms",
                _lt(None if s is None else s.p95_ms, limit) and clean,
                f"over HTTP; the SQL alone: p95 {sql.p95_ms:.3f} ms"
                if sql and sql.p95_ms is not None
                else "",
            )
        )
    c = r.cleanup
    out.append(
        Check(
            "cleanup of the expired part of the 2-day window",
            r.mode,
            "< 60 s",
            None if c is None else c.cleanup_seconds,
            "s",
            c is not None and c.expired_rows > 0 and c.rows_left_after == 0 and c.cleanup_seconds < 60.0,
            ""
            if c is None
            else f"{c.expired_rows:,} rows in {c.chunks_dropped} chunks/partitions; {c.method}",
        )
    )
    return out


def ratios(r: ModeResult) -> list[Ratio]:
    ceiling = r.phase_summary("ceiling", "heartbeat")
    service = r.phase_summary("saturation", "heartbeat")
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
    ]


def goals(r: ModeResult, overload_connections: int) -> list[Check]:
    out: list[Check] = []
    ceiling = r.phase_summary("ceiling", "heartbeat")
    half = r.phase_summary("half", "heartbeat")
    half_phase = r.phases.get("half")
    achieved = None
    if half is not None and half_phase is not None and half_phase.run.elapsed > 0:
        achieved = half.ok / half_phase.run.elapsed
    share = _div(achieved, ceiling.rate if ceiling else None)
    out.append(
        Check(
            "heartbeat p95 at >= 50% of the HTTP ceiling",
            r.mode,
            "<= 25 ms at >= 50% of ceiling",
            None if half is None else half.p95_ms,
            "ms",
            _le(None if half is None else half.p95_ms, 25.0)
            and share is not None
            and share >= 0.5 * HALF_TOLERANCE,
            f"achieved {achieved or 0:,.0f} req/s = {100 * (share or 0):.0f}% of the ceiling; "
            f"{half_phase.run.late if half_phase else 0} requests sent > 5 ms late",
        )
    )
    batched = r.batched.rows_per_s if r.batched else None
    copy_ratio = _div(batched, r.raw_copy.rows_per_s if r.raw_copy else None)
    insert_ratio = _div(batched, r.per_row_insert.rows_per_s if r.per_row_insert else None)
    out.append(
        Check("batched ingest vs raw COPY", r.mode, ">= 0.5x", copy_ratio, "x", _le(0.5, copy_ratio or 0.0))
    )
    out.append(
        Check(
            "batched ingest vs per-row INSERT",
            r.mode,
            ">= 20x",
            insert_ratio,
            "x",
            _le(20.0, insert_ratio or 0.0),
        )
    )
    lookup = r.phase_summary("lookups", "dispatch_lookup")
    sql = r.sql.get("dispatch_lookup_sql")
    out.append(
        Check(
            "dispatch lookup p95",
            r.mode,
            "<= 1 ms",
            None if lookup is None else lookup.p95_ms,
            "ms",
            _le(None if lookup is None else lookup.p95_ms, 1.0),
            f"over HTTP; SQL alone p95 {sql.p95_ms:.3f} ms" if sql and sql.p95_ms is not None else "",
        )
    )
    last = r.phase_summary("last100", "last100")
    sql = r.sql.get("last100_sql")
    out.append(
        Check(
            "last-100 p95 on >= 10 M heartbeat rows",
            r.mode,
            "<= 5 ms, >= 10,000,000 rows",
            None if last is None else last.p95_ms,
            "ms",
            _le(None if last is None else last.p95_ms, 5.0) and r.heartbeat_rows >= 10_000_000,
            f"{r.heartbeat_rows:,} rows in the table; over HTTP"
            + (f"; SQL alone p95 {sql.p95_ms:.3f} ms" if sql and sql.p95_ms is not None else ""),
        )
    )
    c = r.cleanup
    speedup = None if c is None else c.speedup
    out.append(
        Check(
            "cleanup time, and speed-up over DELETE",
            r.mode,
            "<= 1 s and >= 100x DELETE",
            None if c is None else c.cleanup_seconds,
            "s",
            c is not None and c.cleanup_seconds <= 1.0 and (speedup or 0.0) >= 100.0,
            f"(DELETE + VACUUM) ÷ cleanup = {speedup or 0:,.1f}x",
        )
    )
    m = r.memory
    conns = int(m.get("overload_peak_connections", 0))
    full = int(m.get("overload_queue_full_503", 0))
    peak = m.get("overload_peak_mb")
    out.append(
        Check(
            "service RSS with 500 connections open and the write queue full",
            r.mode,
            "<= 150 MB",
            peak,
            "MB",
            _le(peak, 150.0) and conns >= 500 and full > 0,
            f"{conns} established connections at peak (of {overload_connections} clients); "
            f"{full} x 503 queue_full",
        )
    )
    return out


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
                f"{p.cpu['generator_pct']:.0f}%",
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
    "generator CPU",
    "server CPU",
    "PostgreSQL CPU",
    "other CPU",
    "RSS MB",
    "in flight",
    "limited by",
]


def _table(title: str, header: list[str], rows: list[list[str]]) -> Table:
    table = Table(title=title, title_justify="left")
    for h in header:
        table.add_column(h)
    for row in rows:
        table.add_row(*row)
    return table


def _check_rows(checks: list[Check]) -> list[list[str]]:
    return [
        [c.name, c.mode, c.target, f"{_fmt(c.measured, 2)} {c.unit}", "yes" if c.met else "NO", c.note]
        for c in checks
    ]


CHECK_HEADER = ["", "mode", "target", "measured", "met", "note"]


@dataclass
class Report:
    profile: dict[str, Any]
    command: str
    machine: dict[str, Any]
    modes: list[ModeResult]
    elapsed_s: float
    notes: list[str]

    def targets(self) -> list[Check]:
        d, c = self.profile["devices"], self.profile["connections"]
        return [t for r in self.modes for t in targets(r, d, c)]

    def ratios(self) -> list[Ratio]:
        return [x for r in self.modes for x in ratios(r)]

    def goals(self) -> list[Check]:
        return [g for r in self.modes for g in goals(r, self.profile["overload_connections"])]

    def all_targets_met(self) -> bool:
        return bool(self.modes) and all(t.met for t in self.targets())

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
            console.print(_table(f"{r.mode}: latency and throughput", MEASURE_HEADER, measure_rows(r)))
            console.print(_table(f"{r.mode}: ingest", ["path", "rows", "s", "rows/s"], throughput_rows(r)))
            console.print(_table(f"{r.mode}: what each phase used", PHASE_HEADER, phase_rows(r)))
            console.print(_table(f"{r.mode}: the group-commit writer", WRITER_HEADER, writer_rows(r)))
        console.print(_table("The guides' targets", CHECK_HEADER, _check_rows(self.targets())))
        console.print(
            _table(
                "Ratios (same run)",
                ["ratio", "mode", "value", "detail"],
                [[x.name, x.mode, _fmt(x.value, 3), x.detail] for x in self.ratios()],
            )
        )
        console.print(
            _table("Where we are headed (goals, not gates)", CHECK_HEADER, _check_rows(self.goals()))
        )

    def markdown(self, plot_name: str | None) -> str:
        def md(header: list[str], rows: list[list[str]]) -> str:
            esc = [[c.replace("|", "\\|") for c in row] for row in rows]
            lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(row) + " |" for row in esc]
            return "\n".join(lines)

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
            md(["", "mode", "target", "measured", "met", "note"], _check_rows(self.targets())),
            "",
            "## Ratios measured in the same run",
            "",
            md(
                ["ratio", "mode", "value", "detail"],
                [[x.name, x.mode, _fmt(x.value, 3), x.detail] for x in self.ratios()],
            ),
            "",
            "## Where we are headed (goals, not CI gates)",
            "",
            md(["", "mode", "goal", "measured", "met", "note"], _check_rows(self.goals())),
            "",
        ]
        if plot_name:
            out += [f"![latency percentiles]({plot_name})", ""]
        for r in self.modes:
            s = r.setup
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
                md(MEASURE_HEADER, measure_rows(r)),
                "",
                md(["path", "rows", "s", "rows/s"], throughput_rows(r)),
                "",
                md(PHASE_HEADER, phase_rows(r)),
                "",
                "The group-commit writer, from the service's /metrics:",
                "",
                md(WRITER_HEADER, writer_rows(r)),
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
