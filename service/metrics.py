"""Prometheus metrics of one service instance (its own registry: no global state)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = Counter(
            "telemetry_http_requests",
            "HTTP requests by route and status",
            ["method", "route", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "telemetry_http_request_duration_seconds",
            "HTTP request latency",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.rows_written = Counter(
            "telemetry_rows_written", "Rows committed, by table", ["table"], registry=r
        )
        self.rows_absorbed = Counter(
            "telemetry_rows_absorbed",
            "Rows not stored because the database already held them (bucket or idempotency key)",
            ["table"],
            registry=r,
        )
        self.batch_rows = Histogram(
            "telemetry_flush_batch_rows",
            "Rows per group-commit flush",
            buckets=(1, 5, 10, 50, 100, 500, 1000, 5000, 10000),
            registry=r,
        )
        self.flush_seconds = Histogram(
            "telemetry_flush_duration_seconds",
            "Duration of a flush from start to commit",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_rows = Gauge("telemetry_write_queue_rows", "Rows waiting in the write queue", registry=r)
        self.rejected_writes = Counter(
            "telemetry_rejected_writes",
            "Write requests refused before queueing, by reason",
            ["reason"],
            registry=r,
        )
        self.shed_requests = Counter(
            "telemetry_shed_requests",
            "Requests answered 503 at once, before authentication, because database calls have been"
            " waiting for TELEMETRY_STALL_SECONDS with none finishing",
            ["route"],
            registry=r,
        )
        self.failed_writes = Counter(
            "telemetry_failed_writes",
            "Write requests answered with an error after queueing, by reason",
            ["reason"],
            registry=r,
        )
        self.flush_retries = Counter(
            "telemetry_flush_retries", "Flush attempts retried after a transient database error", registry=r
        )
        self.enrollment_failures = Counter(
            "telemetry_enrollment_failures", "Refused enrollment attempts", registry=r
        )
        # Retention health, refreshed by every maintenance round (see service.retention.health).
        self.retention_oldest_row_age = Gauge(
            "telemetry_retention_oldest_row_age_seconds",
            "Age of the oldest row per table (0 while the table is empty)",
            ["table"],
            registry=r,
        )
        self.retention_job_last_success = Gauge(
            "telemetry_retention_job_last_success_timestamp_seconds",
            "When a TimescaleDB job last finished a background run successfully (0: never)",
            ["job"],
            registry=r,
        )
        self.retention_job_failures = Gauge(
            "telemetry_retention_job_failures_total",
            "Failed background runs of a TimescaleDB job, as TimescaleDB counts them",
            ["job"],
            registry=r,
        )
        self.retention_foreground_runs = Counter(
            "telemetry_retention_foreground_runs",
            "Jobs the service ran itself (CALL run_job) because the scheduler failed or was overdue",
            ["job"],
            registry=r,
        )
        self.rollup_lag = Gauge(
            "telemetry_rollup_lag_seconds",
            "How far a rollup's watermark is behind now (buckets after it come from raw rows)",
            ["rollup"],
            registry=r,
        )
        self.command_delivery_seconds = Histogram(
            "telemetry_command_delivery_seconds",
            "Dispatch to delivered ack of commands, fleet-wide (how long pushes take to arrive)",
            buckets=(0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600, 86400),
            registry=r,
        )
        # Refreshed by every maintenance round (service.fleet.presence), not counted per scrape.
        self.devices = Gauge(
            "telemetry_devices",
            "Enrolled devices by presence (online, offline, never_seen, revoked) at the last"
            " maintenance round",
            ["presence"],
            registry=r,
        )
        self.retention_problems = Gauge(
            "telemetry_retention_problems",
            "Retention problems found by the last check (0: every window holds)",
            registry=r,
        )
