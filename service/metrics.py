"""Prometheus metrics of one service instance (its own registry: no global state).

Series whose label values are known up front (the writer's reasons for refusing or failing a
write) exist at 0 from the start, so an alert on `increase()` sees their first event; the alert
rules and the dashboard in deploy/ read these names (tests/deploy checks them against a live
instance).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# What came of one webhook delivery attempt (service.webhooks.delivery).
WEBHOOK_OUTCOMES = ("delivered", "retried", "dead")

# What came of one FCM push send attempt (service.push.worker): sent (200), retried (429, 5xx,
# timeout: tried again), failed (a final answer, or the command's TTL came first), no_token (the
# device had no valid registration token when claimed: nothing was sent).
FCM_OUTCOMES = ("sent", "retried", "failed", "no_token")

# The reasons service.ingest.writer labels its refusals and failures with.
REJECT_REASONS = ("closed", "queue_full")
FAILURE_REASONS = ("unconfirmed", "unavailable", "rejected", "fault")


class MirroredCounter(Collector):
    """A counter that something else counts (TimescaleDB's `total_failures` of a job) and this
    process only copies: exported as a counter (`<name>_total`, TYPE counter), so that
    `increase()` and `promtool check metrics` treat it as one, but set rather than incremented.
    A value that goes down (the job was recreated) is a counter reset, as Prometheus expects."""

    def __init__(self, name: str, documentation: str, labelnames: Iterable[str], registry: CollectorRegistry):
        self._name = name
        self._documentation = documentation
        self._labelnames = tuple(labelnames)
        self._values: dict[tuple[str, ...], float] = {}
        registry.register(self)

    def labels(self, *values: str) -> _MirroredChild:
        if len(values) != len(self._labelnames):
            raise ValueError(f"{self._name} takes labels {self._labelnames}, got {values}")
        return _MirroredChild(self._values, tuple(values))

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(self._name, self._documentation, labels=self._labelnames)
        for values, value in sorted(self._values.items()):
            family.add_metric(values, value)
        yield family


@dataclass(frozen=True, slots=True)
class _MirroredChild:
    _values: dict[tuple[str, ...], float]
    _key: tuple[str, ...]

    def set(self, value: float) -> None:
        self._values[self._key] = float(value)


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
        self.connections_closed = Counter(
            "telemetry_http_connections_closed",
            "Connections the service closed before a request completed, by reason"
            " (per_address_limit, header_timeout, malformed_http)",
            ["reason"],
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
        self.queue_limit_rows = Gauge(
            "telemetry_write_queue_limit_rows",
            "TELEMETRY_QUEUE_MAX_ROWS: rows waiting past which writes are refused with 503",
            registry=r,
        )
        self.database_stalled = Gauge(
            "telemetry_database_stalled",
            "1 while database calls have been waiting for TELEMETRY_STALL_SECONDS with none finishing"
            " (requests are shed with 503), else 0; read at each scrape",
            registry=r,
        )
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
        self.retention_job_failures = MirroredCounter(
            "telemetry_retention_job_failures",
            "Failed background runs of a TimescaleDB job, as TimescaleDB counts them",
            ["job"],
            registry=r,
        )
        self.retention_job_schedule = Gauge(
            "telemetry_retention_job_schedule_seconds",
            "How often a TimescaleDB job of the project is scheduled to run",
            ["job"],
            registry=r,
        )
        self.retention_max_row_age = Gauge(
            "telemetry_retention_max_row_age_seconds",
            "Age past which a table's oldest row is a retention problem: its window plus the"
            " documented overshoot",
            ["table"],
            registry=r,
        )
        self.retention_foreground_runs = Counter(
            "telemetry_retention_foreground_runs",
            "Jobs the service ran itself (CALL run_job) because the scheduler failed or was overdue",
            ["job"],
            registry=r,
        )
        self.retention_scheduler_running = Gauge(
            "telemetry_retention_scheduler_running",
            "1 while TimescaleDB's job scheduler runs for the service's database, 0 when it does not"
            " (no job then runs in the background; timescale mode only)",
            ["database"],
            registry=r,
        )
        self.rollup_lag = Gauge(
            "telemetry_rollup_lag_seconds",
            "How far a rollup's watermark is behind now (buckets after it come from raw rows)",
            ["rollup"],
            registry=r,
        )
        self.rollup_max_lag = Gauge(
            "telemetry_rollup_max_lag_seconds",
            "Lag past which a rollup is a retention problem (TELEMETRY_ROLLUP_MAX_LAG_SECONDS, the"
            " daily rollup one day more)",
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
        # Webhooks (service.webhooks.worker): attempts counted as they end; the backlog gauges are
        # refreshed by the worker from the database (all instances' deliveries, not this one's).
        self.webhook_deliveries = Counter(
            "telemetry_webhook_deliveries",
            "Webhook delivery attempts by outcome: delivered (2xx), retried (will be tried again),"
            " dead (410, or retried for TELEMETRY_WEBHOOK_RETRY_SECONDS)",
            ["outcome"],
            registry=r,
        )
        self.webhook_pending = Gauge(
            "telemetry_webhook_pending",
            "Webhook deliveries not yet delivered nor dead, every subscription and instance",
            registry=r,
        )
        self.webhook_oldest_pending_age = Gauge(
            "telemetry_webhook_oldest_pending_age_seconds",
            "Age of the oldest pending webhook delivery of an enabled subscription (0: none pending)",
            registry=r,
        )
        self.webhook_delivery_seconds = Histogram(
            "telemetry_webhook_delivery_seconds",
            "From an event's commit to its delivery's 2xx, per delivered webhook",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600, 4 * 3600, 86400),
            registry=r,
        )
        # FCM pushes (service.push.worker): this instance's attempts, counted as they are recorded.
        self.push_queued = Gauge(
            "telemetry_push_queued",
            "FCM pushes queued (not yet sent, failed or no_token), every instance's",
            registry=r,
        )
        self.push_oldest_queued_age = Gauge(
            "telemetry_push_oldest_queued_age_seconds",
            "Age of the oldest queued FCM push, since its command was dispatched (0: none queued)",
            registry=r,
        )
        self.fcm_sends = Counter(
            "telemetry_fcm_sends",
            "FCM push attempts by outcome: sent, retried (429, 5xx, timeout), failed (final answer"
            " or the command's TTL reached), no_token (no valid registration token: not sent)",
            ["outcome"],
            registry=r,
        )
        self.fcm_send_seconds = Histogram(
            "telemetry_fcm_send_seconds",
            "One FCM messages:send attempt, request to answer (or timeout)",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        for outcome in WEBHOOK_OUTCOMES:
            self.webhook_deliveries.labels(outcome)
        for outcome in FCM_OUTCOMES:
            self.fcm_sends.labels(outcome)
        for reason in REJECT_REASONS:
            self.rejected_writes.labels(reason)
        for reason in FAILURE_REASONS:
            self.failed_writes.labels(reason)
