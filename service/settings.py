"""The one typed settings object. Nothing else in the package reads the environment.

Every value is checked where it is read: a malformed, non-finite (`nan`, `inf`) or out-of-range
value raises `SettingsError` naming the variable, so the CLI exits 2 with one line.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import timedelta
from pathlib import Path
from typing import Literal

StorageMode = Literal["timescale", "postgres"]
ModeChoice = Literal["auto", "timescale", "postgres"]
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class SettingsError(ValueError):
    """A configuration value is missing or malformed; the message names the variable."""


# Upper bounds that only catch typos and overflow: no setting means anything past them.
MAX_INT = 2**31 - 1
MAX_SECONDS = 100 * 365 * 86400
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "WARN", "ERROR", "CRITICAL")
EVENT_LOOPS = ("auto", "uvloop", "asyncio")


FCM_CREDENTIALS_VARIABLE = "TELEMETRY_FCM_CREDENTIALS_FILE"
# The fields of a service-account key the JWT bearer grant and the send URL need.
SERVICE_ACCOUNT_FIELDS = ("project_id", "client_email", "private_key", "token_uri")
_ACTION_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


def service_account_info(path: Path) -> dict[str, str]:
    """The service-account key in `path`, checked as google-auth will use it (readable, JSON,
    `type` service_account, the fields FCM needs, a private key that parses), else
    `SettingsError` naming TELEMETRY_FCM_CREDENTIALS_FILE. The message never quotes the key."""
    name = FCM_CREDENTIALS_VARIABLE
    try:
        raw = path.read_bytes()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise SettingsError(f"{name}: cannot read {str(path)!r}: {reason}") from None
    try:
        info = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise SettingsError(f"{name}: {str(path)!r} is not a JSON document") from None
    if not isinstance(info, dict) or info.get("type") != "service_account":
        raise SettingsError(
            f'{name}: {str(path)!r} is not a service-account key (its "type" must be "service_account";'
            " create one in the Firebase console under Project settings > Service accounts)"
        )
    missing = [f for f in SERVICE_ACCOUNT_FIELDS if not isinstance(info.get(f), str) or not info[f]]
    if missing:
        raise SettingsError(f"{name}: {str(path)!r} lacks {', '.join(missing)}")
    # google-auth is imported here, not at module level: only a configured push needs it.
    from google.oauth2 import service_account

    try:
        service_account.Credentials.from_service_account_info(info)
    except Exception:  # whatever the parser says may quote part of the key: name the field only
        raise SettingsError(f"{name}: the private_key in {str(path)!r} is not a PEM RSA key") from None
    return info


@dataclass(frozen=True, slots=True)
class RetentionWindows:
    """How long each time-series and audit table keeps its rows (the guides' defaults)."""

    device_heartbeats: timedelta = timedelta(days=2)
    fcm_dispatches: timedelta = timedelta(days=2)
    apk_download_events: timedelta = timedelta(days=7)
    # The event log (webhook, feed and stream source; also the device history).
    events: timedelta = timedelta(days=7)
    # Audit tables (plain tables expired by a batched DELETE), the guides' 90 days.
    enrollment_events: timedelta = timedelta(days=90)
    # Commands outlive their 2-day dispatch rows (same expiry as the audit tables).
    commands: timedelta = timedelta(days=90)
    # A command's push (FCM outbox row), kept as long as the command it belongs to.
    command_pushes: timedelta = timedelta(days=90)
    # A bulk dispatch and its fixed targets, kept as long as the commands it created.
    bulk_dispatches: timedelta = timedelta(days=90)
    # Who did what (`service.audit`): the operators' own log, kept over a year.
    operator_audit: timedelta = timedelta(days=400)
    # Rollups (continuous aggregates, or rollup tables kept by the maintenance task).
    device_heartbeats_hourly: timedelta = timedelta(days=90)
    fleet_daily: timedelta = timedelta(days=400)

    def as_dict(self) -> dict[str, timedelta]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


# The variable that seeds each retained table's window when the migrations create the table
# (`telemetry retention set` changes it later). One entry per field of `RetentionWindows`; the
# registry of retained tables (`service.db.retained`) names each table's variable from here.
RETENTION_VARIABLES: dict[str, str] = {
    "device_heartbeats": "TELEMETRY_RETENTION_HEARTBEATS_SECONDS",
    "fcm_dispatches": "TELEMETRY_RETENTION_DISPATCHES_SECONDS",
    "apk_download_events": "TELEMETRY_RETENTION_DOWNLOADS_SECONDS",
    "events": "TELEMETRY_RETENTION_EVENTS_SECONDS",
    "enrollment_events": "TELEMETRY_RETENTION_ENROLLMENT_EVENTS_SECONDS",
    "commands": "TELEMETRY_RETENTION_COMMANDS_SECONDS",
    "command_pushes": "TELEMETRY_RETENTION_COMMAND_PUSHES_SECONDS",
    "bulk_dispatches": "TELEMETRY_RETENTION_BULK_DISPATCHES_SECONDS",
    "operator_audit": "TELEMETRY_RETENTION_OPERATOR_AUDIT_SECONDS",
    "device_heartbeats_hourly": "TELEMETRY_RETENTION_HOURLY_SECONDS",
    "fleet_daily": "TELEMETRY_RETENTION_FLEET_DAILY_SECONDS",
}


@dataclass(frozen=True, slots=True)
class PresencePolicy:
    """When a device counts as offline: `missed_beats` of its expected interval (learned from
    its own heartbeat gaps; `default_interval` until `min_gaps` gaps were seen) after it was
    last seen, and never sooner than `min_offline`."""

    default_interval: timedelta = timedelta(seconds=60)
    missed_beats: int = 3
    min_offline: timedelta = timedelta(seconds=120)
    # Gaps seen before the learned interval replaces the default.
    min_gaps: int = 3
    # Weight of each new gap in the learned interval (exponentially weighted mean).
    learning_rate: float = 0.2


@dataclass(frozen=True, slots=True)
class Settings:
    database_url: str | None = None
    data_dir: Path = Path(".telemetry-data")
    storage_mode: ModeChoice = "auto"
    host: str = "127.0.0.1"
    port: int = 8080
    migrate_on_start: bool = True
    # `serve` retries an unreachable database this long (with backoff) before giving up; every
    # command gives one connection attempt `db_connect_timeout` to be answered.
    db_wait: timedelta = timedelta(seconds=30)
    db_connect_timeout: timedelta = timedelta(seconds=10)
    # Group commit: a flush starts when `batch_max_rows` rows wait or `batch_window` has passed
    # since the first row of the batch arrived, whichever comes first.
    batch_window: timedelta = timedelta(milliseconds=5)
    batch_max_rows: int = 5000
    # The queue's rows are held as Python objects (about 0.3-0.5 KB each, measured): this bounds
    # the service's memory under overload as much as it bounds the wait (benchmarks/RESULTS.md).
    queue_max_rows: int = 20_000
    retry_after_seconds: int = 1
    flush_retry_attempts: int = 5
    # Database calls waiting this long with none finishing mean the database is stalled: /v1/
    # requests are refused (503) instead of queued. A write waits at most `ack_timeout` for
    # its commit.
    stall_after: timedelta = timedelta(seconds=2)
    ack_timeout: timedelta = timedelta(seconds=10)
    pool_size: int = 10
    heartbeat_bucket_seconds: int = 10
    max_clock_skew: timedelta = timedelta(minutes=5)
    max_batch_heartbeats: int = 500
    max_body_bytes: int = 1024 * 1024
    # How much of a request body aiohttp reads ahead per connection (it pauses reading at twice
    # this; the rest waits in the kernel's socket buffer): the memory 500 connections that all
    # post at once cost before their handlers run (benchmarks/RESULTS.md, "Memory").
    read_buffer_bytes: int = 16 * 1024
    # What an unauthenticated request may cost (`service.api.bodies`): `/v1/enroll` reads at most
    # this many bytes, uncompressed; larger ones are 413 before a byte of the body is read.
    enroll_max_body_bytes: int = 4096
    # Body bytes all requests together may hold while they are read and decoded; past it a new
    # upload is 503 before it is read, so many slow uploads cannot take the memory.
    body_budget_bytes: int = 32 * 1024 * 1024
    # HTTP connection limits (`service.api.connections`): a request's headers must be complete
    # this long after its first byte, its body this long after its headers; a connection with
    # no request in progress is closed after the idle timeout; one address holds at most this
    # many connections (trusted proxies excepted).
    http_header_timeout: timedelta = timedelta(seconds=10)
    http_body_timeout: timedelta = timedelta(seconds=30)
    http_idle_timeout: timedelta = timedelta(seconds=75)
    max_connections_per_address: int = 256
    retention: RetentionWindows = field(default_factory=RetentionWindows)
    partition_lookahead: timedelta = timedelta(days=1)
    maintenance_interval: timedelta = timedelta(minutes=5)
    # `retention check` fails when the hourly rollup's watermark is older than this (the daily
    # one is allowed one day more: its buckets close once a day).
    rollup_max_lag: timedelta = timedelta(hours=4)
    # timescale mode: heartbeat chunks older than this are compressed (zero: never).
    compress_after: timedelta = timedelta(hours=6)
    # A command with no terminal ack this long after its dispatch is marked expired; one still
    # pending (not delivered) this long counts as stuck (push reachability).
    command_ttl: timedelta = timedelta(days=1)
    command_stuck: timedelta = timedelta(minutes=10)
    presence: PresencePolicy = field(default_factory=PresencePolicy)
    # `GET /v1/fleet/summary` serves a snapshot at most this old (zero: computed per request).
    fleet_summary_max_age: timedelta = timedelta(seconds=5)
    # `GET /v1/events/stream`: a comment line after this much silence keeps proxies from
    # closing the stream; the server ends a stream after `events_stream_max` (the client
    # resumes with Last-Event-ID), so no connection is held for ever.
    events_stream_keepalive: timedelta = timedelta(seconds=15)
    events_stream_max: timedelta = timedelta(minutes=30)
    # Webhooks (`service.webhooks`): a delivery is retried with backoff for this long, then
    # dead; one attempt may take `webhook_timeout` (connecting at most `webhook_connect_timeout`
    # of it); receivers on loopback, private, link-local or metadata addresses are refused
    # unless allowed. At most `webhook_concurrency` requests to one subscription are in flight
    # per instance. Delivered rows are kept `webhook_keep_delivered`, then deleted by the
    # worker (dead ones as long as the event log keeps events, past their retry window).
    webhook_retry: timedelta = timedelta(hours=24)
    webhook_timeout: timedelta = timedelta(seconds=10)
    webhook_connect_timeout: timedelta = timedelta(seconds=5)
    webhook_allow_private: bool = False
    webhook_concurrency: int = 8
    webhook_keep_delivered: timedelta = timedelta(hours=24)
    # Run the fan-out and delivery loops in this instance (off: this instance only serves the API).
    webhook_worker: bool = True
    # Push (`service.push`): without a credentials file the service is pull only. The endpoint
    # (and the token URI, which otherwise comes from the file) are overridable for emulators and
    # tests; urgent actions are sent with Android priority high.
    fcm_credentials_file: Path | None = None
    fcm_endpoint: str = "https://fcm.googleapis.com"
    fcm_token_uri: str | None = None
    fcm_urgent_actions: tuple[str, ...] = ("lock", "wipe")
    fcm_timeout: timedelta = timedelta(seconds=10)
    fcm_max_connections: int = 64
    # Claim and send queued pushes in this instance (off: this instance only queues them).
    push_worker: bool = True
    log_level: str = "INFO"
    # `serve`'s event loop: uvloop where installed (auto), or the standard library's.
    event_loop: Literal["auto", "uvloop", "asyncio"] = "auto"
    # Peers whose X-Forwarded-For is believed (reverse proxies); none by default.
    trusted_proxies: tuple[IPNetwork, ...] = ()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read `TELEMETRY_*` variables (and `DATABASE_URL`); absent ones keep their defaults."""
        env = os.environ if environ is None else environ
        d = cls()

        def get(name: str) -> str | None:
            value = env.get(name)
            return value if value not in (None, "") else None

        def as_int(name: str, default: int, minimum: int = 0, maximum: int = MAX_INT) -> int:
            raw = get(name)
            if raw is None:
                return default
            try:
                value = int(raw)
            except ValueError:
                raise SettingsError(f"{name} must be an integer, got {raw!r}") from None
            if not minimum <= value <= maximum:
                raise SettingsError(f"{name} must be between {minimum} and {maximum}, got {value}")
            return value

        def as_seconds(name: str, default: timedelta, *, positive: bool = False) -> timedelta:
            """Seconds, finite, >= 0 (> 0 when `positive`: zero would mean "never" or "always")."""
            raw = get(name)
            if raw is None:
                return default
            try:
                value = float(raw)
            except ValueError:
                raise SettingsError(f"{name} must be a number of seconds, got {raw!r}") from None
            if not math.isfinite(value):
                raise SettingsError(f"{name} must be a finite number of seconds, got {raw!r}")
            if value < 0 or (positive and value == 0):
                raise SettingsError(f"{name} must be {'>' if positive else '>='} 0 seconds, got {raw}")
            if value > MAX_SECONDS:
                raise SettingsError(f"{name} must be at most {MAX_SECONDS} seconds (100 years), got {raw}")
            return timedelta(seconds=value)

        def as_bool(name: str, default: bool) -> bool:
            raw = get(name)
            if raw is None:
                return default
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise SettingsError(f"{name} must be a boolean, got {raw!r}")

        def as_networks(name: str) -> tuple[IPNetwork, ...]:
            raw = get(name)
            if raw is None:
                return ()
            networks = []
            for item in raw.split(","):
                try:
                    networks.append(ipaddress.ip_network(item.strip(), strict=False))
                except ValueError:
                    raise SettingsError(
                        f"{name} must be a comma-separated list of addresses or CIDR blocks, got {item!r}"
                    ) from None
            return tuple(networks)

        def as_http_url(name: str, default: str | None) -> str | None:
            raw = get(name)
            if raw is None:
                return default
            if not re.fullmatch(r"https?://[^\s/?#@]+(/[^\s?#]*)?", raw):
                raise SettingsError(f"{name} must be an http(s) URL without query or user, got {raw!r}")
            return raw.rstrip("/")

        def as_actions(name: str, default: tuple[str, ...]) -> tuple[str, ...]:
            raw = env.get(name)
            if raw is None:
                return default
            actions = tuple(a.strip() for a in raw.split(",") if a.strip())
            for action in actions:
                if not _ACTION_NAME.match(action):
                    raise SettingsError(f"{name} must be comma-separated action names, got {action!r}")
            return actions

        fcm_file = get(FCM_CREDENTIALS_VARIABLE)
        if fcm_file is not None:
            service_account_info(Path(fcm_file))
        if get("TELEMETRY_RETENTION_DEVICE_EVENTS_SECONDS") is not None:
            # Refused rather than ignored: a deployment that set it would silently keep less.
            raise SettingsError(
                "TELEMETRY_RETENTION_DEVICE_EVENTS_SECONDS was replaced by"
                " TELEMETRY_RETENTION_EVENTS_SECONDS: device events are part of the event log now"
            )
        mode = get("TELEMETRY_STORAGE_MODE") or d.storage_mode
        if mode not in ("auto", "timescale", "postgres"):
            raise SettingsError(f"TELEMETRY_STORAGE_MODE must be auto, timescale or postgres, got {mode!r}")
        log_level = (get("TELEMETRY_LOG_LEVEL") or d.log_level).upper()
        if log_level not in LOG_LEVELS:
            raise SettingsError(
                f"TELEMETRY_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, got {log_level!r}"
            )
        event_loop = get("TELEMETRY_EVENT_LOOP") or d.event_loop
        if event_loop not in EVENT_LOOPS:
            raise SettingsError(
                f"TELEMETRY_EVENT_LOOP must be one of {', '.join(EVENT_LOOPS)}, got {event_loop!r}"
            )
        retention = RetentionWindows(
            **{
                table: as_seconds(variable, getattr(d.retention, table), positive=True)
                for table, variable in RETENTION_VARIABLES.items()
            }
        )
        presence = PresencePolicy(
            default_interval=as_seconds(
                "TELEMETRY_PRESENCE_DEFAULT_INTERVAL_SECONDS", d.presence.default_interval, positive=True
            ),
            missed_beats=as_int("TELEMETRY_PRESENCE_MISSED_BEATS", d.presence.missed_beats, 1, 1000),
            min_offline=as_seconds("TELEMETRY_PRESENCE_MIN_OFFLINE_SECONDS", d.presence.min_offline),
        )
        return cls(
            database_url=get("DATABASE_URL"),
            data_dir=Path(get("TELEMETRY_DATA_DIR") or d.data_dir),
            storage_mode=mode,  # type: ignore[arg-type]
            host=get("TELEMETRY_HOST") or d.host,
            port=as_int("TELEMETRY_PORT", d.port, 1, 65535),
            migrate_on_start=as_bool("TELEMETRY_MIGRATE_ON_START", d.migrate_on_start),
            db_wait=as_seconds("TELEMETRY_DB_WAIT_SECONDS", d.db_wait),
            db_connect_timeout=as_seconds(
                "TELEMETRY_DB_CONNECT_TIMEOUT_SECONDS", d.db_connect_timeout, positive=True
            ),
            batch_window=as_seconds("TELEMETRY_BATCH_WINDOW_SECONDS", d.batch_window),
            batch_max_rows=as_int("TELEMETRY_BATCH_MAX_ROWS", d.batch_max_rows, 1),
            queue_max_rows=as_int("TELEMETRY_QUEUE_MAX_ROWS", d.queue_max_rows, 1),
            retry_after_seconds=as_int("TELEMETRY_RETRY_AFTER_SECONDS", d.retry_after_seconds, 1),
            flush_retry_attempts=as_int("TELEMETRY_FLUSH_RETRY_ATTEMPTS", d.flush_retry_attempts, 1),
            stall_after=as_seconds("TELEMETRY_STALL_SECONDS", d.stall_after, positive=True),
            ack_timeout=as_seconds("TELEMETRY_ACK_TIMEOUT_SECONDS", d.ack_timeout, positive=True),
            pool_size=as_int("TELEMETRY_POOL_SIZE", d.pool_size, 2),
            heartbeat_bucket_seconds=as_int(
                "TELEMETRY_HEARTBEAT_BUCKET_SECONDS", d.heartbeat_bucket_seconds, 1
            ),
            max_clock_skew=as_seconds("TELEMETRY_MAX_CLOCK_SKEW_SECONDS", d.max_clock_skew),
            max_batch_heartbeats=as_int("TELEMETRY_MAX_BATCH_HEARTBEATS", d.max_batch_heartbeats, 1),
            max_body_bytes=as_int("TELEMETRY_MAX_BODY_BYTES", d.max_body_bytes, 1024),
            read_buffer_bytes=as_int("TELEMETRY_READ_BUFFER_BYTES", d.read_buffer_bytes, 1024),
            enroll_max_body_bytes=as_int(
                "TELEMETRY_ENROLL_MAX_BODY_BYTES", d.enroll_max_body_bytes, 256, 1024 * 1024
            ),
            body_budget_bytes=as_int("TELEMETRY_BODY_BUDGET_BYTES", d.body_budget_bytes, 1024 * 1024),
            http_header_timeout=as_seconds(
                "TELEMETRY_HTTP_HEADER_TIMEOUT_SECONDS", d.http_header_timeout, positive=True
            ),
            http_body_timeout=as_seconds(
                "TELEMETRY_HTTP_BODY_TIMEOUT_SECONDS", d.http_body_timeout, positive=True
            ),
            http_idle_timeout=as_seconds(
                "TELEMETRY_HTTP_IDLE_TIMEOUT_SECONDS", d.http_idle_timeout, positive=True
            ),
            max_connections_per_address=as_int(
                "TELEMETRY_MAX_CONNECTIONS_PER_ADDRESS", d.max_connections_per_address, 1
            ),
            retention=retention,
            partition_lookahead=as_seconds(
                "TELEMETRY_PARTITION_LOOKAHEAD_SECONDS", d.partition_lookahead, positive=True
            ),
            maintenance_interval=as_seconds(
                "TELEMETRY_MAINTENANCE_INTERVAL_SECONDS", d.maintenance_interval, positive=True
            ),
            rollup_max_lag=as_seconds("TELEMETRY_ROLLUP_MAX_LAG_SECONDS", d.rollup_max_lag, positive=True),
            compress_after=as_seconds("TELEMETRY_COMPRESS_AFTER_SECONDS", d.compress_after),
            command_ttl=as_seconds("TELEMETRY_COMMAND_TTL_SECONDS", d.command_ttl, positive=True),
            command_stuck=as_seconds("TELEMETRY_COMMAND_STUCK_SECONDS", d.command_stuck, positive=True),
            presence=presence,
            fleet_summary_max_age=as_seconds(
                "TELEMETRY_FLEET_SUMMARY_MAX_AGE_SECONDS", d.fleet_summary_max_age
            ),
            events_stream_keepalive=as_seconds(
                "TELEMETRY_EVENTS_STREAM_KEEPALIVE_SECONDS", d.events_stream_keepalive, positive=True
            ),
            events_stream_max=as_seconds(
                "TELEMETRY_EVENTS_STREAM_MAX_SECONDS", d.events_stream_max, positive=True
            ),
            webhook_retry=as_seconds("TELEMETRY_WEBHOOK_RETRY_SECONDS", d.webhook_retry, positive=True),
            webhook_timeout=as_seconds("TELEMETRY_WEBHOOK_TIMEOUT_SECONDS", d.webhook_timeout, positive=True),
            webhook_connect_timeout=as_seconds(
                "TELEMETRY_WEBHOOK_CONNECT_TIMEOUT_SECONDS", d.webhook_connect_timeout, positive=True
            ),
            webhook_allow_private=as_bool("TELEMETRY_WEBHOOK_ALLOW_PRIVATE", d.webhook_allow_private),
            webhook_concurrency=as_int("TELEMETRY_WEBHOOK_CONCURRENCY", d.webhook_concurrency, 1, 256),
            webhook_keep_delivered=as_seconds(
                "TELEMETRY_WEBHOOK_KEEP_DELIVERED_SECONDS", d.webhook_keep_delivered, positive=True
            ),
            webhook_worker=as_bool("TELEMETRY_WEBHOOK_WORKER", d.webhook_worker),
            fcm_credentials_file=Path(fcm_file) if fcm_file is not None else None,
            fcm_endpoint=as_http_url("TELEMETRY_FCM_ENDPOINT", d.fcm_endpoint) or d.fcm_endpoint,
            fcm_token_uri=as_http_url("TELEMETRY_FCM_TOKEN_URI", d.fcm_token_uri),
            fcm_urgent_actions=as_actions("TELEMETRY_FCM_URGENT_ACTIONS", d.fcm_urgent_actions),
            fcm_timeout=as_seconds("TELEMETRY_FCM_TIMEOUT_SECONDS", d.fcm_timeout, positive=True),
            fcm_max_connections=as_int("TELEMETRY_FCM_MAX_CONNECTIONS", d.fcm_max_connections, 1, 10_000),
            push_worker=as_bool("TELEMETRY_PUSH_WORKER", d.push_worker),
            log_level=log_level,
            event_loop=event_loop,  # type: ignore[arg-type]
            trusted_proxies=as_networks("TELEMETRY_TRUSTED_PROXIES"),
        )
