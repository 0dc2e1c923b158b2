"""Request and response bodies as msgspec structs: the validation rules and the OpenAPI schemas
come from these same declarations.

Structural rules (types, required and unknown fields, lengths, ranges) live in the structs;
rules that depend on the clock or configuration (timestamps inside the retention window and
the accepted clock skew, batch size) are checked by `service.api.validation`.

Every integer field is bounded to its column's type (`service.db.models`) and every string to
its column's length, so no value that passes validation can fail when the writer encodes it.
Numbers inside free-form JSON (`extra`, `payload`) are held to `JSON_INT_MIN..JSON_INT_MAX` and
must be finite by `service.api.validation.check_storable`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

# Results the domain packages define and the API serves as they are (same fields, same names in
# the document): re-exported here so that the endpoint table names every body in one module.
from service.audit.log import AuditEntry
from service.bulk.dispatches import BULK_REQUEST_ID_MAX, MAX_DEVICE_IDS, BulkCounts, BulkState
from service.commands.dispatches import Dispatch
from service.commands.lifecycle import ACKED, Command, CommandStatus
from service.commands.reachability import PushReachability
from service.fleet.summary import AppVersionCount, FleetSummary
from service.fleet.tags import MAX_TAG_LENGTH, MAX_TAGS, TAG
from service.rollout.funnel import RolloutDownloads, RolloutFunnel, RolloutInstallations
from service.rollout.installations import InstallationStatus

__all__ = [
    "AppVersionCount",
    "AuditEntry",
    "BulkCounts",
    "BulkState",
    "Command",
    "Dispatch",
    "FleetSummary",
    "PushReachability",
    "RolloutDownloads",
    "RolloutFunnel",
    "RolloutInstallations",
]

# Column types' ranges (PostgreSQL smallint, integer, bigint).
INT4_MAX = 2**31 - 1
INT8_MAX = 2**63 - 1
# Integers inside free-form JSON: what a bigint (and most JSON readers' int64) can hold.
JSON_INT_MIN, JSON_INT_MAX = -INT8_MAX, INT8_MAX

FREE_FORM = "Free-form JSON object: integers within ±(2^63-1), nested at most 32 deep, no U+0000 in text"

# Patterns end in `\Z`, never `$`: msgspec matches with Python's `re`, where `$` also matches
# before a trailing newline ("X\n" would pass as "X"). The OpenAPI document spells `\Z` as `$`,
# which in JSON Schema's ECMA-262 dialect means the end of the value (`service.api.openapi_doc`).
# Closed sets of words are `Literal`s: exact, and an `enum` in the document.
IDENTIFIER = r"^[A-Za-z0-9][A-Za-z0-9._:@-]*\Z"

DeviceId = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=128,
        pattern=IDENTIFIER,
        description="Device identifier: letters, digits and . _ : @ -",
    ),
]
RequestId = Annotated[
    str, Meta(min_length=1, max_length=128, pattern=IDENTIFIER, description="Idempotency key of the dispatch")
]
Timestamp = Annotated[datetime, Meta(tz=True, description="RFC 3339 with a UTC offset")]
ShortText = Annotated[str, Meta(min_length=1, max_length=64)]


class Struct(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=False):
    pass


# --- device side ------------------------------------------------------------------------------


class Heartbeat(Struct):
    status: ShortText
    battery_pct: Annotated[int, Meta(ge=0, le=100)]
    ts: Timestamp | None = None
    app_version: Annotated[str, Meta(max_length=64)] | None = None
    network: Annotated[str, Meta(max_length=32)] | None = None
    extra: Annotated[dict[str, Any], Meta(max_length=32, description=FREE_FORM)] | None = None


class HeartbeatBatch(Struct):
    heartbeats: Annotated[list[Heartbeat], Meta(min_length=1)]


class HeartbeatResult(Struct):
    ts: datetime
    bucket_start: datetime
    stored: bool


class HeartbeatsResponse(Struct):
    device_id: str
    results: list[HeartbeatResult]


class ApkDownload(Struct):
    build_id: Annotated[str, Meta(min_length=1, max_length=128)]
    outcome: Annotated[
        Literal["started", "completed", "failed", "cancelled"],
        Meta(description="started, completed, failed or cancelled"),
    ]
    ts: Timestamp | None = None
    # Accepted for older clients and ignored: the event's token is the device's own enrollment.
    enrollment_token_id: (
        Annotated[
            int,
            Meta(
                ge=1,
                le=INT8_MAX,
                description="Deprecated and ignored: the event's token is the one the calling"
                " device enrolled with",
                extra_json_schema={"deprecated": True},
            ),
        ]
        | None
    ) = None
    bytes_downloaded: Annotated[int, Meta(ge=0, le=INT8_MAX)] | None = None
    # Makes a retry idempotent: the same device, event_key and ts name the same event.
    event_key: (
        Annotated[
            str,
            Meta(
                min_length=1,
                max_length=128,
                description="client-chosen key of the event, unique per device; with `ts` (then"
                " required) a retry stores nothing twice",
            ),
        ]
        | None
    ) = None


class ApkDownloadResponse(Struct):
    id: int
    device_id: str
    ts: datetime
    stored: bool = True  # False: this event_key and ts were already stored


class EnrollRequest(Struct):
    enrollment_token: Annotated[str, Meta(min_length=1, max_length=256)]
    device_id: DeviceId


class EnrollResponse(Struct):
    device_id: str
    device_token: str


# --- operator side ----------------------------------------------------------------------------


class EnrollmentTokenRequest(Struct):
    expires_in_seconds: Annotated[int, Meta(ge=60, le=365 * 86400)] = 86400
    max_uses: Annotated[int, Meta(ge=1, le=1_000_000)] = 1
    scope: Literal["device"] = "device"
    note: Annotated[str, Meta(max_length=500)] | None = None
    # Bound token: only this device id can enroll with it, and only a bound token re-enrolls an
    # existing id (a factory-reset or reinstated device).
    device_id: DeviceId | None = None


class EnrollmentTokenResponse(Struct):
    id: int
    token: str
    scope: str
    expires_at: datetime
    max_uses: int
    device_id: str | None = None


class DispatchRequest(Struct):
    request_id: RequestId
    device_id: DeviceId
    action: ShortText
    payload: Annotated[dict[str, Any], Meta(max_length=64, description=FREE_FORM)] | None = None


class DispatchList(Struct):
    device_id: str
    dispatches: list[Dispatch]


class StoredHeartbeat(Struct):
    ts: datetime
    bucket_start: datetime
    received_at: datetime
    status: str
    battery_pct: int
    app_version: str | None
    network: str | None
    extra: dict[str, Any] | None


class HeartbeatList(Struct):
    device_id: str
    heartbeats: list[StoredHeartbeat]


Presence = Annotated[
    Literal["online", "offline", "never_seen", "revoked"],
    Meta(
        description="online until last_seen_at + missed beats x expected interval; offline after;"
        " never_seen before the first heartbeat; revoked while the credential is revoked",
    ),
]


class DeviceSummary(Struct):
    device_id: str
    enrolled_at: datetime
    credential_revoked: bool
    last_seen_at: Annotated[
        datetime | None, Meta(description="When the server received the device's newest heartbeat")
    ]
    last_status: str | None
    last_battery_pct: int | None
    banned: bool = False  # revoked and not reinstated: the id cannot enroll
    push: PushReachability | None = None
    presence: Presence = "never_seen"
    offline_since: Annotated[datetime | None, Meta(description="The deadline that passed, while offline")] = (
        None
    )
    expected_interval_seconds: Annotated[
        float | None, Meta(description="Learned from the device's own heartbeat gaps")
    ] = None
    last_app_version: str | None = None
    last_network: str | None = None
    last_ts: Annotated[datetime | None, Meta(description="The device's own time of its newest heartbeat")] = (
        None
    )
    offline_after: Annotated[
        datetime | None, Meta(description="The deadline: offline from then on unless it is heard from")
    ] = None
    tags: Annotated[list[str], Meta(description="The operator's tags on the device, sorted")] = []


Tag = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=MAX_TAG_LENGTH,
        pattern=TAG,
        description=f"1-{MAX_TAG_LENGTH} of letters, digits and ._:/-, starting with a letter or a digit",
    ),
]


class DeviceTagsRequest(Struct):
    tags: Annotated[
        list[Tag], Meta(max_length=MAX_TAGS, description=f"The device's whole set of tags (<= {MAX_TAGS})")
    ]


class DeviceTags(Struct):
    device_id: str
    tags: Annotated[list[str], Meta(description="The device's tags now, sorted, each once")]
    changed: Annotated[bool, Meta(description="False: the device had exactly these tags already")]


class AuditList(Struct):
    entries: list[AuditEntry]
    next_before: Annotated[
        int | None, Meta(description="before= for the next page; null on the last one")
    ] = None


class DeviceList(Struct):
    devices: list[DeviceSummary]
    next_cursor: Annotated[
        str | None, Meta(description="Pass as `cursor` for the next page; null on the last page")
    ]


class DeviceEvent(Struct):
    id: int
    device_id: str
    event_type: str
    at: datetime
    details: dict[str, Any] | None


class Event(Struct):
    """One event of the log. `payload`'s shape is the catalogue struct named after `type`
    (`components.schemas`, e.g. `DeviceWentOffline` for `device.went_offline`) at `version`."""

    id: Annotated[int, Meta(description="Grows with insertion; deduplicates")]
    cursor: Annotated[str, Meta(description="Resume after this event: `after=` or `Last-Event-ID`")]
    type: str
    version: int
    occurred_at: datetime
    device_id: Annotated[str | None, Meta(description="Null for fleet-wide events (retention.*)")]
    payload: dict[str, Any]


class EventPage(Struct):
    events: list[Event]
    next_cursor: Annotated[
        str,
        Meta(
            description="Pass as `after` for the next page; when the page is not full, it is past"
            " every event visible now, so polling with it repeats nothing"
        ),
    ]


class DeviceEventList(Struct):
    device_id: str
    events: list[DeviceEvent]
    next_before: Annotated[
        int | None, Meta(description="Pass as `before` for older events; null when none are left")
    ]


class EnrollmentEvent(Struct):
    id: int
    enrollment_token_id: int | None
    device_id: str | None
    outcome: str
    remote_addr: str | None
    attempts: int
    at: datetime


class EnrollmentEventList(Struct):
    events: list[EnrollmentEvent]
    next_before: int | None


class DeviceState(Struct):
    """After a revocation or a reinstatement."""

    device_id: str
    credential_revoked: bool
    banned: bool


class ErrorDetail(Struct):
    code: str
    message: str
    field: str | None = None
    request_id: Annotated[
        str | None,
        Meta(description="The request's id (also in the X-Request-ID header): quote it when reporting"),
    ] = None


class ErrorBody(Struct):
    error: ErrorDetail


class Health(Struct):
    status: str
    live: bool
    ready: bool
    database: str
    schema: str
    storage_mode: str | None = None
    # The database's revision(s): a deploy waits for these to be the new head.
    revisions: list[str] | None = None
    # "degraded" (still ready): retention problems found by the last maintenance round.
    problems: list[str] = msgspec.field(default_factory=list)


# --- commands (see service.api.commands) -------------------------------------------------------

# Derived, never spelled: the endpoint table's query enum (`service.api.routes`).
COMMAND_STATUSES = CommandStatus.values()
AckStatus = CommandStatus.literal(ACKED)
ErrorText = Annotated[str, Meta(min_length=1, max_length=1000)]


class CommandAck(Struct):
    status: Annotated[AckStatus, Meta(description=CommandStatus.description(ACKED))]
    ts: Timestamp | None = None
    result: Annotated[dict[str, Any], Meta(max_length=64, description=FREE_FORM)] | None = None
    error: ErrorText | None = None


class CommandAckResponse(Struct):
    changed: Annotated[bool, Meta(description="False: a repeated ack; nothing changed")]
    command: Command


class CommandConflict(Struct):
    """409: the ack would move the command backward (or out of a terminal status)."""

    error: ErrorDetail
    command: Command


class CommandList(Struct):
    commands: list[Command]
    device_id: str | None = None


# --- bulk dispatch (see service.api.bulk) --------------------------------------------------------


class BulkFilter(Struct):
    """The device list's filters (`GET /v1/devices`), at least one."""

    presence: Presence | None = None
    app_version: Annotated[ShortText, Meta(description="Last app version equals")] | None = None
    status: Annotated[ShortText, Meta(description="Last status equals")] | None = None
    battery_below: Annotated[int, Meta(ge=0, le=101, description="Last battery below")] | None = None
    q: Annotated[str, Meta(min_length=1, max_length=128, description="Device id prefix")] | None = None
    tag: Tag | None = None


class BulkSelector(Struct):
    """Exactly one of `device_ids`, `filter` or `all: true`; devices whose credential is revoked
    are never targeted."""

    device_ids: (
        Annotated[
            list[DeviceId],
            Meta(min_length=1, max_length=MAX_DEVICE_IDS, description=f"At most {MAX_DEVICE_IDS} devices"),
        ]
        | None
    ) = None
    filter: BulkFilter | None = None
    all: Annotated[bool, Meta(description="Every device (must be true when given)")] | None = None


class BulkDispatchRequest(Struct):
    request_id: Annotated[
        str,
        Meta(
            min_length=1,
            max_length=BULK_REQUEST_ID_MAX,
            pattern=IDENTIFIER,
            description="Idempotency key of the bulk; each command's is `{request_id}:{device_id}`",
        ),
    ]
    action: ShortText
    selector: BulkSelector
    payload: Annotated[dict[str, Any], Meta(max_length=64, description=FREE_FORM)] | None = None


class BulkTarget(Struct):
    device_id: str
    command: Annotated[Command | None, Meta(description="None until its command is created")]


class BulkDispatchView(Struct):
    bulk: BulkState
    counts: BulkCounts
    targets: list[BulkTarget]
    next_after: Annotated[str | None, Meta(description="`after` of the next page; None on the last")] = None


class BulkCancelResponse(Struct):
    cancelled: Annotated[int, Meta(description="Open commands this cancel closed")]
    bulk: BulkState


# --- APK builds and rollouts (see service.api.apk) ---------------------------------------------

BuildId = Annotated[str, Meta(min_length=1, max_length=128, pattern=IDENTIFIER)]
PackageName = Annotated[
    str, Meta(min_length=1, max_length=255, pattern=r"^[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z][A-Za-z0-9_]*)*\Z")
]


class ApkVersionRequest(Struct):
    package_name: PackageName
    version_code: Annotated[int, Meta(ge=1, le=INT4_MAX)]
    version_name: Annotated[str, Meta(min_length=1, max_length=64)]
    build_id: BuildId
    sha256: Annotated[str, Meta(pattern=r"^[0-9a-f]{64}\Z", description="lower-case hex")]
    size_bytes: Annotated[int, Meta(ge=1, le=INT8_MAX)]
    ci_commit_sha: Annotated[str, Meta(min_length=1, max_length=64)] | None = None
    ci_run_id: Annotated[str, Meta(min_length=1, max_length=128)] | None = None


class PackageFilter(Struct):
    package_name: PackageName


class ApkVersion(Struct):
    package_name: str
    version_code: int
    version_name: str
    build_id: str
    sha256: str | None
    size_bytes: int | None
    ci_commit_sha: str | None
    ci_run_id: str | None
    created_at: datetime


class ApkVersionList(Struct):
    versions: list[ApkVersion]


InstallationReportStatus = InstallationStatus.literal()


class ApkInstallationReport(Struct):
    build_id: BuildId
    status: Annotated[InstallationReportStatus, Meta(description=InstallationStatus.description())]
    error: ErrorText | None = None


class ApkInstallation(Struct):
    device_id: str
    build_id: str
    status: str
    verified: Annotated[bool, Meta(description="A heartbeat of the device reported this version")]
    error: str | None
    created_at: datetime
    updated_at: datetime
    installed_at: datetime | None
    failed_at: datetime | None
    changed: bool = True


class InstallationConflict(Struct):
    """409: the report would move the installation backward."""

    error: ErrorDetail
    installation: ApkInstallation


# --- history (rollups plus the raw tail; see service.api.history) ------------------------------


class DeviceHistoryBucket(Struct):
    start: datetime
    heartbeats: int
    battery_min: int | None
    battery_avg: float | None
    battery_max: int | None
    # ok, charging, idle, low_battery, other
    status_counts: dict[str, int]
    last_app_version: str | None
    first_ts: datetime | None
    last_ts: datetime | None


class FleetHistoryBucket(Struct):
    start: datetime
    devices_seen: int
    heartbeats: int
    battery_avg: float | None


class DeviceHistory(Struct):
    device_id: str
    bucket: str
    from_: datetime = msgspec.field(name="from")
    to: datetime = msgspec.field(name="to")
    # The oldest bucket this tier still keeps: earlier buckets are absent, not empty.
    available_from: datetime = msgspec.field(name="available_from")
    # Buckets before it come from the rollup, later ones from the raw rows.
    materialized_until: datetime | None = None
    buckets: list[DeviceHistoryBucket] = msgspec.field(default_factory=list)


class FleetHistory(Struct):
    bucket: str
    from_: datetime = msgspec.field(name="from")
    to: datetime = msgspec.field(name="to")
    available_from: datetime = msgspec.field(name="available_from")
    materialized_until: datetime | None = None
    buckets: list[FleetHistoryBucket] = msgspec.field(default_factory=list)
