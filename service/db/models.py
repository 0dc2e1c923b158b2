"""The whole schema as typed SQLAlchemy 2.0 models (the head revision's shape).

Migrations under `alembic/versions/` build exactly this; `telemetry migrate check` compares the
two. The time-series tables are partitioned by their time column (a TimescaleDB hypertable
or a native range-partitioned table), which shapes their keys: PostgreSQL only allows a unique
index on a partitioned table when it contains the partitioning column.

* `device_heartbeats` is partitioned by `bucket_start`, the start of the device's bucket
  (`ts` floored to the bucket size). Its primary key `(device_id, bucket_start)` contains the
  partitioning column, so "at most one heartbeat per device per bucket" is an ordinary unique
  constraint that the database enforces across every writer.
* `fcm_dispatches` is partitioned by `sent_at`, so `UNIQUE (request_id)` is impossible on it. The
  idempotency key lives in the small plain table `fcm_dispatch_keys` (primary key
  `request_id`), and every dispatch row must match its key row exactly through a composite
  foreign key `(request_id, id, sent_at)`; together with `UNIQUE (id, sent_at)` on the dispatch
  table this allows at most one dispatch per `request_id`, whoever inserts it.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ARRAY,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Double,
    ForeignKey,
    ForeignKeyConstraint,
    Identity,
    Index,
    Integer,
    Interval,
    MetaData,
    PrimaryKeyConstraint,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from service.db.rollups import HOURLY_READ_COLUMNS

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

NOW = text("now()")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {
        datetime: DateTime(timezone=True),
        dict[str, Any]: JSONB,
        timedelta: Interval,
    }


# --- core -------------------------------------------------------------------------------------


class User(Base):
    """An operator."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    username: Mapped[str] = mapped_column(String(128), unique=True)
    role: Mapped[str] = mapped_column(String(16), server_default="admin")
    created_at: Mapped[datetime] = mapped_column(server_default=NOW)
    disabled_at: Mapped[datetime | None]
    # argon2id (`service.console.passwords`); NULL: this operator cannot log in to the console.
    password_hash: Mapped[str | None] = mapped_column(String(256))

    # `ci`: may only register APK builds (`POST /v1/apk-versions`).
    __table_args__ = (CheckConstraint("role IN ('admin', 'viewer', 'ci')", name="role_known"),)


class Session(Base):
    """An operator API token (`kind` 'api') or a console login (`kind` 'console', idle expiry
    judged from `last_used_at`); only the SHA-256 hash of either secret is stored."""

    __tablename__ = "sessions"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(server_default=NOW)
    expires_at: Mapped[datetime | None]
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    kind: Mapped[str] = mapped_column(String(16), server_default="api")

    __table_args__ = (CheckConstraint("kind IN ('api', 'console')", name="kind_known"),)


class Device(Base):
    """An enrolled device; its credential is bound to `id` and only its hash is stored."""

    __tablename__ = "devices"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    enrollment_token_id: Mapped[int | None] = mapped_column(
        ForeignKey("enrollment_tokens.id", ondelete="SET NULL")
    )
    enrolled_at: Mapped[datetime] = mapped_column(server_default=NOW)
    credential_revoked_at: Mapped[datetime | None]
    # Set by revocation, cleared only by an operator's reinstate: a banned id cannot enroll.
    banned_at: Mapped[datetime | None]


class DevicePresence(Base):
    """A device's presence, one row per enrolled device (created at enrollment), kept by the
    writer in each heartbeat batch's transaction (`service.fleet.presence.UPDATE_PRESENCE`).

    A table of its own, not columns of `devices`: every heartbeat rewrites this row, and since
    `offline_after` (indexed) moves with it, no update is HOT. Here a rewrite costs the narrow
    row plus two index entries (the primary key and the pending-deadline index); on `devices` it
    would also re-insert into the credential-hash index, and `devices` (fleet-wide, a Citus
    reference table) would be rewritten on every node. `fillfactor` leaves room for the new
    version on the same page.

    `last_seen_at` is the server's time the newest heartbeat was received (presence is judged
    on it); `last_ts` is the device's own time of its newest heartbeat, and the `last_*` values
    are that heartbeat's. A device is offline from `offline_after` on; `offline_since` is set
    (to that deadline) when the `went_offline` event is recorded and cleared when it comes back.
    """

    __tablename__ = "device_presence"

    device_id: Mapped[str] = mapped_column(
        String(128), ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True
    )
    last_seen_at: Mapped[datetime | None]
    last_ts: Mapped[datetime | None]
    last_status: Mapped[str | None] = mapped_column(String(64))
    last_battery_pct: Mapped[int | None] = mapped_column(SmallInteger)
    last_app_version: Mapped[str | None] = mapped_column(String(64))
    last_network: Mapped[str | None] = mapped_column(String(32))
    # Learned from the device's own heartbeat gaps (EWMA); the deadline uses it once
    # `gaps_seen` is large enough, the configured default before.
    learned_interval_seconds: Mapped[float | None] = mapped_column(Double)
    gaps_seen: Mapped[int] = mapped_column(Integer, server_default="0")
    expected_interval_seconds: Mapped[float | None] = mapped_column(Double)
    offline_after: Mapped[datetime | None]
    offline_since: Mapped[datetime | None]

    __table_args__ = (
        # Pending deadlines: the went_offline pass and the not-yet-recorded part of the offline
        # list are range scans here. Offline devices leave it, so a pass never re-reads them.
        Index(
            "ix_device_presence_offline_after",
            "offline_after",
            "device_id",
            postgresql_where=text("offline_since IS NULL"),
        ),
        # Recorded offline devices, oldest first: written only at transitions.
        Index(
            "ix_device_presence_offline_since",
            "offline_since",
            "device_id",
            postgresql_where=text("offline_since IS NOT NULL"),
        ),
        {"postgresql_with": {"fillfactor": 80}},
    )


class DevicePushToken(Base):
    """A device's FCM registration token, as the device last reported it
    (`PUT /v1/device/push-token`, `service.push.tokens`).

    `changed_at` is when the token last changed (a report of the same token moves only
    `reported_at`). `invalid_at` is set when FCM answered `UNREGISTERED` for this very token and
    cleared when the device reports a different one: until then no push is sent to it. A table of
    its own keyed by `device_id` (the scale-out note), not columns of `devices`: it is written by
    devices and by the sender, and `devices` stays a small reference table."""

    __tablename__ = "device_push_tokens"

    device_id: Mapped[str] = mapped_column(
        String(128), ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True
    )
    token: Mapped[str] = mapped_column(String(1024))
    changed_at: Mapped[datetime] = mapped_column(server_default=NOW)
    reported_at: Mapped[datetime] = mapped_column(server_default=NOW)
    invalid_at: Mapped[datetime | None]
    invalid_reason: Mapped[str | None] = mapped_column(String(64))


class DeviceTag(Base):
    """One tag an operator set on a device (`PUT /v1/devices/{id}/tags`, `service.fleet.tags`).

    Keyed by `(device_id, tag)` (the scale-out note: per-device rows keep `device_id` in their
    keys); `(tag, device_id)` finds a tag's devices for the list's and the summary's `tag=`."""

    __tablename__ = "device_tags"

    device_id: Mapped[str] = mapped_column(
        String(128), ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True
    )
    tag: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(server_default=NOW)

    __table_args__ = (Index("ix_device_tags_tag_device_id", "tag", "device_id"),)


class EnrollmentToken(Base):
    __tablename__ = "enrollment_tokens"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scope: Mapped[str] = mapped_column(String(64), server_default="device")
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(server_default=NOW)
    expires_at: Mapped[datetime]
    max_uses: Mapped[int] = mapped_column(Integer, server_default="1")
    use_count: Mapped[int] = mapped_column(Integer, server_default="0")
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    note: Mapped[str | None] = mapped_column(Text)
    # When set, only this device id can enroll with the token (and re-enroll an existing id).
    device_id: Mapped[str | None] = mapped_column(String(128))

    __table_args__ = (
        CheckConstraint("max_uses > 0", name="max_uses_positive"),
        CheckConstraint("use_count >= 0 AND use_count <= max_uses", name="use_count_in_range"),
    )


# --- time series ------------------------------------------------------------------------------


class DeviceHeartbeat(Base):
    __tablename__ = "device_heartbeats"

    device_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    bucket_start: Mapped[datetime] = mapped_column(primary_key=True)
    ts: Mapped[datetime]
    received_at: Mapped[datetime] = mapped_column(server_default=NOW)
    status: Mapped[str] = mapped_column(String(64))
    battery_pct: Mapped[int] = mapped_column(SmallInteger)
    app_version: Mapped[str | None] = mapped_column(String(64))
    network: Mapped[str | None] = mapped_column(String(32))
    extra: Mapped[dict[str, Any] | None]

    __table_args__ = (
        CheckConstraint("battery_pct BETWEEN 0 AND 100", name="battery_pct_range"),
        CheckConstraint("bucket_start <= ts", name="bucket_start_not_after_ts"),
        Index("ix_device_heartbeats_device_id_ts", "device_id", text("ts DESC")),
    )


class FcmDispatchKey(Base):
    """The idempotency key of a dispatch: at most one row per `request_id`, ever."""

    __tablename__ = "fcm_dispatch_keys"

    request_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    dispatch_id: Mapped[int] = mapped_column(BigInteger)
    sent_at: Mapped[datetime]

    __table_args__ = (UniqueConstraint("request_id", "dispatch_id", "sent_at"),)


class FcmDispatch(Base):
    __tablename__ = "fcm_dispatches"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    sent_at: Mapped[datetime] = mapped_column(primary_key=True)
    request_id: Mapped[str] = mapped_column(String(128))
    device_id: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any] | None]
    status: Mapped[str] = mapped_column(String(32), server_default="pending")
    created_by: Mapped[int | None] = mapped_column(BigInteger)

    __table_args__ = (
        ForeignKeyConstraint(
            ["request_id", "id", "sent_at"],
            [
                "fcm_dispatch_keys.request_id",
                "fcm_dispatch_keys.dispatch_id",
                "fcm_dispatch_keys.sent_at",
            ],
            ondelete="CASCADE",
        ),
        Index("ix_fcm_dispatches_request_id", "request_id"),
        Index("ix_fcm_dispatches_device_id_sent_at", "device_id", text("sent_at DESC")),
    )


class ApkDownloadEvent(Base):
    __tablename__ = "apk_download_events"

    id: Mapped[int] = mapped_column(
        BigInteger, primary_key=True, server_default=text("nextval('apk_download_events_id_seq')")
    )
    ts: Mapped[datetime] = mapped_column(primary_key=True)
    build_id: Mapped[str] = mapped_column(String(128))
    device_id: Mapped[str] = mapped_column(String(128))
    token_id: Mapped[int | None] = mapped_column(BigInteger)
    outcome: Mapped[str] = mapped_column(String(32))
    bytes_downloaded: Mapped[int | None] = mapped_column(BigInteger)

    __table_args__ = (
        Index("ix_apk_download_events_build_id_ts", "build_id", text("ts DESC")),
        Index("ix_apk_download_events_token_id_ts", "token_id", text("ts DESC")),
        # The rollout funnel: counts per outcome and each device's last completed download of
        # a build, from the index alone.
        Index(
            "ix_apk_download_events_build_id_outcome_device_id_ts", "build_id", "outcome", "device_id", "ts"
        ),
    )


# --- APK management ---------------------------------------------------------------------------


class ApkVersion(Base):
    __tablename__ = "apk_versions"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    package_name: Mapped[str] = mapped_column(String(255))
    version_code: Mapped[int] = mapped_column(Integer)
    version_name: Mapped[str] = mapped_column(String(64))
    build_id: Mapped[str] = mapped_column(String(128), unique=True)
    created_at: Mapped[datetime] = mapped_column(server_default=NOW)
    ci_commit_sha: Mapped[str | None] = mapped_column(String(64))
    ci_run_id: Mapped[str | None] = mapped_column(String(128))
    sha256: Mapped[str | None] = mapped_column(String(64))
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)

    __table_args__ = (UniqueConstraint("package_name", "version_code"),)


class ApkInstallation(Base):
    """One row per (device, APK version): its install status, moving forward only (installing →
    installed | failed; a failed install may be retried). `verified`: a heartbeat of the device
    reported the version's `version_name` (see `service.rollout.verification`)."""

    __tablename__ = "apk_installations"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), index=True)
    apk_version_id: Mapped[int] = mapped_column(ForeignKey("apk_versions.id"), index=True)
    status: Mapped[str] = mapped_column(String(32))
    installed_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(server_default=NOW)
    created_at: Mapped[datetime] = mapped_column(server_default=NOW)
    failed_at: Mapped[datetime | None]
    error: Mapped[str | None] = mapped_column(Text)
    verified: Mapped[bool] = mapped_column(server_default=text("false"))
    # The device's last completed download of the version before it was installed, copied from
    # the raw events when the install is confirmed: the funnel's median outlives those events.
    download_completed_at: Mapped[datetime | None]

    __table_args__ = (
        UniqueConstraint("device_id", "apk_version_id"),
        CheckConstraint("status IN ('installing', 'installed', 'failed')", name="status_known"),
        # The verification step reads only the rows a heartbeat has not confirmed yet.
        Index("ix_apk_installations_unverified", "device_id", postgresql_where=text("NOT verified")),
    )


class DeviceAppVersion(Base):
    """The app version of each device's latest heartbeat, as of the last maintenance round
    (`service.rollout.verification`): the rollout funnel counts it without reading raw
    heartbeats, and the heartbeat path does not pay for it."""

    __tablename__ = "device_app_versions"

    device_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    app_version: Mapped[str] = mapped_column(String(64), index=True)
    reported_at: Mapped[datetime]  # the heartbeat's ts
    updated_at: Mapped[datetime] = mapped_column(server_default=NOW)


# --- rollout funnel: counts kept ahead of the read (service.rollout.counts) -------------------


class ApkDownloadCount(Base):
    """Download events per (build, hour, outcome), added in the same statement that stores
    the events (the writer's download merge). The funnel sums the hours of the raw window (at
    most 170 rows per outcome); hours older than any raw event still kept are pruned by the
    maintenance task."""

    __tablename__ = "apk_download_counts"

    build_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    bucket_start: Mapped[datetime] = mapped_column(primary_key=True)
    outcome: Mapped[str] = mapped_column(String(32), primary_key=True)
    events: Mapped[int] = mapped_column(BigInteger)


class ApkInstallationCount(Base):
    """Installations per (version, slot, status, verified), kept by statement triggers on
    `apk_installations` in the statement that changes the installation (report, verification,
    a device's deletion alike). `slot` (hash of the device id, 0-15) spreads one build's
    concurrent reports over 16 rows, so they do not queue on one row lock. `changes` only
    grows: the maintenance task recomputes a version's median when their sum moved."""

    __tablename__ = "apk_installation_counts"

    apk_version_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    slot: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    status: Mapped[str] = mapped_column(String(32), primary_key=True)
    verified: Mapped[bool] = mapped_column(primary_key=True)
    installations: Mapped[int] = mapped_column(BigInteger)
    changes: Mapped[int] = mapped_column(BigInteger)


class ApkRolloutSnapshot(Base):
    """What the funnel cannot count cheaply at read time, computed by the maintenance task:
    devices whose latest heartbeat reports the version (`device_app_versions` is itself kept
    by that task) and the median time from download completed to installed."""

    __tablename__ = "apk_rollout_snapshots"

    apk_version_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    devices_reporting: Mapped[int] = mapped_column(BigInteger)
    median_download_to_install_seconds: Mapped[float | None] = mapped_column(Double)
    # sum(apk_installation_counts.changes) of the version the median was computed from
    installation_changes: Mapped[int] = mapped_column(BigInteger)
    as_of: Mapped[datetime]


# --- audit ------------------------------------------------------------------------------------


class Event(Base):
    """The event log: every state change that leaves the service (webhooks, the pull feed, the
    live stream) and the device history `GET /v1/devices/{id}/events` reads. It replaced
    `device_events` (revision 20251203): one log, so the history and the feed cannot disagree.

    Written in the transaction of its cause, never otherwise (see `service.events`). Partitioned
    by `occurred_at` like the other time-series tables, hence `occurred_at` in the primary key;
    `device_id` leads it for the Citus note (distributed by device). A fleet-wide event (no
    device: `retention.problem_*`) has `device_id = ''`, which no device id can be.

    `id` comes from a sequence, so it only grows, but in the order ids were drawn, not the order
    transactions committed. `txid` (the writing transaction's id, `pg_current_xact_id()`) is what
    the feed pages by: `(txid, id)` over events whose transaction is older than every transaction
    still running, an order that a commit arriving later can never fall behind
    (`service.events.feed`)."""

    __tablename__ = "events"

    device_id: Mapped[str] = mapped_column(String(128), primary_key=True, server_default="")
    id: Mapped[int] = mapped_column(
        BigInteger, primary_key=True, server_default=text("nextval('events_id_seq')")
    )
    occurred_at: Mapped[datetime] = mapped_column(primary_key=True, server_default=NOW)
    type: Mapped[str] = mapped_column(String(64))
    # The payload's schema version for its type (`service.events.catalogue`).
    version: Mapped[int] = mapped_column(SmallInteger, server_default="1")
    payload: Mapped[dict[str, Any]] = mapped_column(server_default=text("'{}'::jsonb"))
    txid: Mapped[int] = mapped_column(BigInteger, server_default=text("(pg_current_xact_id()::text)::bigint"))

    __table_args__ = (
        # The feed and the stream: keyset over (txid, id).
        Index("ix_events_txid_id", "txid", "id"),
        # A device's history, newest first.
        Index("ix_events_device_id_occurred_at_id", "device_id", "occurred_at", "id"),
    )


class EnrollmentEvent(Base):
    __tablename__ = "enrollment_events"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    enrollment_token_id: Mapped[int | None] = mapped_column(BigInteger, index=True)
    device_id: Mapped[str | None] = mapped_column(String(128))
    outcome: Mapped[str] = mapped_column(String(32))
    remote_addr: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(server_default=NOW, index=True)
    # Refusals are one row per (address, window) with a count, so a flood cannot grow the table.
    attempts: Mapped[int] = mapped_column(Integer, server_default="1")
    window_start: Mapped[datetime | None]

    __table_args__ = (UniqueConstraint("outcome", "remote_addr", "window_start"),)


class OperatorAudit(Base):
    """Who did what: one row per operator write, through the API or the CLI (`service.audit`).

    A plain fleet-wide table kept `TELEMETRY_RETENTION_OPERATOR_AUDIT_SECONDS` (400 days),
    expired by the audit tables' batched `DELETE` on `at`; read newest first by `id`, by
    operator or by target through their indexes."""

    __tablename__ = "operator_audit"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    at: Mapped[datetime] = mapped_column(server_default=NOW, index=True)
    operator: Mapped[str] = mapped_column(String(160))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(300))
    request_id: Mapped[str | None] = mapped_column(String(128))
    client_address: Mapped[str | None] = mapped_column(String(64))
    details: Mapped[dict[str, Any] | None]

    __table_args__ = (
        Index("ix_operator_audit_operator_id", "operator", "id"),
        Index("ix_operator_audit_target_id", "target", "id"),
    )


class Command(Base):
    """A remote command an operator issued to a device (the long-lived record).

    Created with its dispatch (`POST /v1/dispatches`, same transaction, `created_at` = the
    dispatch's `sent_at`) and kept `TELEMETRY_RETENTION_COMMANDS_SECONDS` (an audit-style
    table: batched `DELETE` by `created_at`), long after the 2-day dispatch row. `status`
    moves forward only: pending → delivered → executed | failed, cancelled (by an operator, while
    open), or expired (no terminal ack within `TELEMETRY_COMMAND_TTL_SECONDS`); each transition
    has its own timestamp.
    """

    __tablename__ = "commands"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    device_id: Mapped[str] = mapped_column(String(128))
    command: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any] | None]
    status: Mapped[str] = mapped_column(String(32), server_default="pending")
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(server_default=NOW)
    updated_at: Mapped[datetime] = mapped_column(server_default=NOW)
    request_id: Mapped[str] = mapped_column(String(128), unique=True)
    delivered_at: Mapped[datetime | None]
    executed_at: Mapped[datetime | None]
    failed_at: Mapped[datetime | None]
    expired_at: Mapped[datetime | None]
    cancelled_at: Mapped[datetime | None]
    result: Mapped[dict[str, Any] | None]
    error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        CheckConstraint(
            "status IN ('pending', 'delivered', 'executed', 'failed', 'expired', 'cancelled')",
            name="status_known",
        ),
        # A device's commands by time (operator list, reachability over its last commands).
        Index("ix_commands_device_id_created_at", "device_id", "created_at"),
        # The pull: a device's undelivered commands, oldest first.
        Index(
            "ix_commands_pending_device_id_created_at",
            "device_id",
            "created_at",
            postgresql_where=text("status = 'pending'"),
        ),
        # Expiry and the fleet's stuck commands: only the open ones.
        Index(
            "ix_commands_open_created_at",
            "created_at",
            postgresql_where=text("status IN ('pending', 'delivered')"),
        ),
        # Retention (batched DELETE by created_at).
        Index("ix_commands_created_at", "created_at"),
    )


class CommandPush(Base):
    """A command's FCM push: the outbox row the dispatch merge inserts in the same statement as
    the new command (never for a repeated `request_id`), only when FCM is configured.

    `queued` rows are claimed by the push workers of every instance (`FOR UPDATE SKIP LOCKED`,
    a lease in `next_attempt_at`), so a push committed before a crash is sent after it; a push
    ends `sent` (FCM's message `name`, `pushed_at`), `failed` (a final answer, or retries that
    reached `expires_at`, the command's TTL) or `no_token` (the device had no valid registration
    token). `id` is the command's id; keyed with `device_id` (the scale-out note)."""

    __tablename__ = "command_pushes"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    device_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    request_id: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), server_default="queued")
    created_at: Mapped[datetime] = mapped_column(server_default=NOW)
    expires_at: Mapped[datetime]
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    next_attempt_at: Mapped[datetime] = mapped_column(server_default=NOW)
    message_name: Mapped[str | None] = mapped_column(String(256))
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(String(256))
    pushed_at: Mapped[datetime | None]

    __table_args__ = (
        CheckConstraint("status IN ('queued', 'sent', 'failed', 'no_token')", name="status_known"),
        # The claim: due queued rows, oldest due first.
        Index(
            "ix_command_pushes_next_attempt_at",
            "next_attempt_at",
            postgresql_where=text("status = 'queued'"),
        ),
        # Retention (batched DELETE by created_at).
        Index("ix_command_pushes_created_at", "created_at"),
    )


class BulkDispatch(Base):
    """One command to a selection of devices (`POST /v1/dispatches/bulk`, `service.commands.bulk`).

    Its targets are fixed when it is created (`bulk_dispatch_targets`, `target_count`); the
    commands are created from them afterwards, in chunks, each chunk in one transaction with the
    `expanded_through` mark it advances (so creation resumes after a crash and never creates a
    command twice); `expanded_at` is set with the last chunk, `cancelled_at` by its cancel.
    `request_id` is the operator's idempotency key; each command's is derived from it."""

    __tablename__ = "bulk_dispatches"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    request_id: Mapped[str] = mapped_column(String(64), unique=True)
    action: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any] | None]
    selector: Mapped[dict[str, Any]]
    target_count: Mapped[int] = mapped_column(Integer)
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(server_default=NOW)
    expanded_through: Mapped[str | None] = mapped_column(String(128))
    expanded_at: Mapped[datetime | None]
    cancelled_at: Mapped[datetime | None]

    __table_args__ = (
        # Retention (batched DELETE by created_at).
        Index("ix_bulk_dispatches_created_at", "created_at"),
        # The expanders' claim: bulks still creating commands.
        Index(
            "ix_bulk_dispatches_unexpanded",
            "id",
            postgresql_where=text("expanded_at IS NULL AND cancelled_at IS NULL"),
        ),
    )


class BulkDispatchTarget(Base):
    """A device a bulk dispatch addresses, fixed at the bulk's creation (keyed with `device_id`:
    the scale-out note); read in `device_id` order to create, count, page and cancel."""

    __tablename__ = "bulk_dispatch_targets"

    bulk_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("bulk_dispatches.id", ondelete="CASCADE"), primary_key=True
    )
    device_id: Mapped[str] = mapped_column(String(128), primary_key=True)


# --- retention configuration ------------------------------------------------------------------


class RetentionPolicy(Base):
    """Retention window per time-series or audit table, shared by every service instance."""

    __tablename__ = "retention_policies"

    table_name: Mapped[str] = mapped_column(String(63), primary_key=True)
    drop_after: Mapped[timedelta]
    # NULL for a plain (audit) table, which is expired by a batched DELETE, not by partition.
    partition_interval: Mapped[timedelta | None]
    updated_at: Mapped[datetime] = mapped_column(server_default=NOW)

    __table_args__ = (CheckConstraint("drop_after > interval '0'", name="drop_after_positive"),)


# --- rollups (see service.db.rollups) ---------------------------------------------------------
#
# The rollup-table mechanism's shape. Where a rollup is a TimescaleDB continuous aggregate (a
# view with the same columns) it is not a table, and `alembic check` leaves it out
# (`service.migrations.environment.include_object`).


class DeviceHeartbeatHourly(Base):
    """The primary key INCLUDEs every column the device-history read selects, so the read is an
    index-only scan (`service.db.rollups.HOURLY_READ_COLUMNS`)."""

    __tablename__ = "device_heartbeats_hourly"
    __table_args__ = (
        PrimaryKeyConstraint("device_id", "hour", postgresql_include=list(HOURLY_READ_COLUMNS)),
        {"info": {"rollup": True}},
    )

    device_id: Mapped[str] = mapped_column(String(128))
    hour: Mapped[datetime]
    heartbeats: Mapped[int] = mapped_column(BigInteger)
    battery_min: Mapped[int | None] = mapped_column(SmallInteger)
    battery_avg: Mapped[float | None] = mapped_column(Double)
    battery_max: Mapped[int | None] = mapped_column(SmallInteger)
    battery_sum: Mapped[int | None] = mapped_column(BigInteger)
    status_ok: Mapped[int] = mapped_column(BigInteger)
    status_charging: Mapped[int] = mapped_column(BigInteger)
    status_idle: Mapped[int] = mapped_column(BigInteger)
    status_low_battery: Mapped[int] = mapped_column(BigInteger)
    status_other: Mapped[int] = mapped_column(BigInteger)
    last_app_version: Mapped[str | None] = mapped_column(String(64))
    first_ts: Mapped[datetime | None]
    last_ts: Mapped[datetime | None]


class FleetDaily(Base):
    __tablename__ = "fleet_daily"
    __table_args__ = {"info": {"rollup": True}}

    day: Mapped[datetime] = mapped_column(primary_key=True)
    devices_seen: Mapped[int] = mapped_column(BigInteger)
    heartbeats: Mapped[int] = mapped_column(BigInteger)
    battery_sum: Mapped[int | None] = mapped_column(BigInteger)
    battery_avg: Mapped[float | None] = mapped_column(Double)


class FleetDailyRecent(Base):
    """The days `fleet_daily` has not closed yet (from its watermark up to the hourly one),
    computed by the maintenance task from the hourly rollup (`service.retention.recent_days`),
    so a fleet history never counts distinct devices over hourly rows at read time. Each row
    covers `[day, covered_until)` when `covered_until` falls inside its day, else the whole day."""

    __tablename__ = "fleet_daily_recent"

    day: Mapped[datetime] = mapped_column(primary_key=True)
    devices_seen: Mapped[int] = mapped_column(BigInteger)
    heartbeats: Mapped[int] = mapped_column(BigInteger)
    battery_sum: Mapped[int | None] = mapped_column(BigInteger)
    battery_avg: Mapped[float | None] = mapped_column(Double)
    covered_until: Mapped[datetime]
    computed_at: Mapped[datetime] = mapped_column(server_default=NOW)


class RollupWatermark(Base):
    """Rollup-table mechanism: every bucket before `materialized_until` is materialized."""

    __tablename__ = "rollup_watermarks"

    rollup: Mapped[str] = mapped_column(String(63), primary_key=True)
    materialized_until: Mapped[datetime | None]
    refreshed_at: Mapped[datetime | None]


# --- webhooks ---------------------------------------------------------------------------------


class WebhookSubscription(Base):
    """A receiver of the event log's events (`service.webhooks`). `after_txid`/`after_id` is its
    fan-out cursor in the feed's order (`service.events.feed`): every event past it that matches
    `event_types` (NULL: all) gets a delivery row, in the transaction that moves the cursor.
    `secret` signs deliveries (Standard Webhooks), so it is kept, not hashed."""

    __tablename__ = "webhook_subscriptions"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    url: Mapped[str] = mapped_column(String(2048))
    event_types: Mapped[list[str] | None] = mapped_column(ARRAY(Text))
    description: Mapped[str | None] = mapped_column(String(256))
    secret: Mapped[str] = mapped_column(String(128))
    enabled: Mapped[bool] = mapped_column(Boolean, server_default=text("true"))
    disabled_reason: Mapped[str | None] = mapped_column(String(64))
    after_txid: Mapped[int] = mapped_column(BigInteger)
    after_id: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(server_default=NOW)


class WebhookDelivery(Base):
    """One event for one subscription: pending until delivered or dead, never dropped.

    Claimed through the database (`FOR UPDATE SKIP LOCKED`, a lease in `next_attempt_at`), so
    a delivery whose sender died is claimed again after its lease: at least once."""

    __tablename__ = "webhook_deliveries"

    subscription_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("webhook_subscriptions.id", ondelete="CASCADE"), primary_key=True
    )
    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    event_id: Mapped[int] = mapped_column(BigInteger)
    event: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(16), server_default="pending")
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    next_attempt_at: Mapped[datetime] = mapped_column(server_default=NOW)
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(String(1024))
    created_at: Mapped[datetime] = mapped_column(server_default=NOW)
    delivered_at: Mapped[datetime | None]

    __table_args__ = (
        UniqueConstraint("subscription_id", "event_id"),
        CheckConstraint("status IN ('pending', 'delivered', 'dead')", name="status_known"),
        Index(
            "ix_webhook_deliveries_next_attempt_at",
            "next_attempt_at",
            postgresql_where=text("status = 'pending'"),
        ),
    )
