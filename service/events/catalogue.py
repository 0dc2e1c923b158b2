"""The event catalogue: every event type, with the shape of its payload and that shape's version.

An event is `{id, cursor, type, version, occurred_at, device_id, payload}`. `type` names one
of the structs below (its `TYPE`); `payload` has that struct's fields. A change that a consumer
written against an older shape could misread (a field removed, renamed or retyped) gets a new
`VERSION`; adding an optional field does not. The structs are exported in `/openapi.json`
(`components.schemas`, named `Event_<type>`), and tests decode every payload the service
writes with them, so this module is also the contract the SQL that writes payloads
(`service.fleet.presence`, `service.commands.acks`, ...) is held to.

`device_id` is null for fleet-wide events (`retention.*`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

import msgspec


class Payload(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """One event type's payload."""

    TYPE: ClassVar[str]
    VERSION: ClassVar[int] = 1


# --- devices ----------------------------------------------------------------------------------


class DeviceEnrolled(Payload):
    """A new device id enrolled with a token (`POST /v1/enroll`)."""

    TYPE = "device.enrolled"
    enrollment_token_id: int
    scope: str | None = None


class DeviceReEnrolled(DeviceEnrolled):
    """An existing device id enrolled again (new credential; the old one stops working)."""

    TYPE = "device.re_enrolled"


class DeviceRevoked(Payload):
    """An operator revoked the device's credential and banned its id."""

    TYPE = "device.revoked"
    by: str


class DeviceReinstated(Payload):
    """An operator lifted the device's ban (its old credential stays dead)."""

    TYPE = "device.reinstated"
    by: str


class DeviceWentOffline(Payload):
    """The device's offline deadline passed (`occurred_at` is that deadline)."""

    TYPE = "device.went_offline"
    last_seen_at: datetime
    expected_interval_seconds: float


class DeviceCameOnline(Payload):
    """A heartbeat arrived after the device's deadline; `gap_seconds` since it was last seen."""

    TYPE = "device.came_online"
    offline_since: datetime
    last_seen_at: datetime
    gap_seconds: float


class DeviceAppVersionChanged(Payload, rename={"from_": "from"}):
    """The device's newest heartbeat reports another app version than the one before."""

    TYPE = "device.app_version_changed"
    from_: str
    to: str


# --- commands ---------------------------------------------------------------------------------


class CommandAcked(Payload):
    """Common to the ack-driven moves: the command, and its status before this move."""

    TYPE = "command.acked"
    request_id: str
    command: str
    previous: str


class CommandDelivered(CommandAcked):
    """The device acknowledged receiving the command."""

    TYPE = "command.delivered"


class CommandExecuted(CommandAcked):
    """The device reported the command executed (`result` as it sent it)."""

    TYPE = "command.executed"
    result: dict[str, Any] | None = None


class CommandFailed(CommandAcked):
    """The device reported the command failed (`error` as it sent it)."""

    TYPE = "command.failed"
    error: str | None = None


class CommandCancelled(CommandAcked):
    """An operator cancelled the command while it was pending or delivered (`by`: its name)."""

    TYPE = "command.cancelled"
    by: str


class CommandExpired(Payload):
    """No terminal ack came within `TELEMETRY_COMMAND_TTL_SECONDS` of the dispatch."""

    TYPE = "command.expired"
    request_id: str
    command: str
    previous: str
    dispatched_at: datetime


# --- APK installs -----------------------------------------------------------------------------


class InstallFailed(Payload):
    """The device reported a failed install of a build."""

    TYPE = "install.failed"
    build_id: str
    version_name: str
    error: str | None = None


class InstallVerified(Payload):
    """A heartbeat reported the build's version: the install is confirmed."""

    TYPE = "install.verified"
    build_id: str
    version_name: str


# --- retention --------------------------------------------------------------------------------


class RetentionProblemRaised(Payload):
    """Retention health went from no problem to at least one (`telemetry retention check`)."""

    TYPE = "retention.problem_raised"
    problems: list[str]


class RetentionProblemCleared(Payload):
    """Retention health went from problems to none; `problems` were the last ones reported."""

    TYPE = "retention.problem_cleared"
    problems: list[str]


PAYLOADS: tuple[type[Payload], ...] = (
    DeviceEnrolled,
    DeviceReEnrolled,
    DeviceRevoked,
    DeviceReinstated,
    DeviceWentOffline,
    DeviceCameOnline,
    DeviceAppVersionChanged,
    CommandDelivered,
    CommandExecuted,
    CommandFailed,
    CommandExpired,
    CommandCancelled,
    InstallFailed,
    InstallVerified,
    RetentionProblemRaised,
    RetentionProblemCleared,
)
BY_TYPE: dict[str, type[Payload]] = {p.TYPE: p for p in PAYLOADS}
EVENT_TYPES: tuple[str, ...] = tuple(BY_TYPE)

# The device history (`GET /v1/devices/{id}/events`) keeps the names it had before the log
# (`device_events.event_type`).
DEVICE_HISTORY_NAMES: dict[str, str] = {
    DeviceEnrolled.TYPE: "enrolled",
    DeviceReEnrolled.TYPE: "re_enrolled",
    DeviceRevoked.TYPE: "credential_revoked",
    DeviceReinstated.TYPE: "reinstated",
    DeviceWentOffline.TYPE: "went_offline",
    DeviceCameOnline.TYPE: "came_online",
    DeviceAppVersionChanged.TYPE: "app_version_changed",
}


def decode_payload(type_: str, version: int, payload: object) -> Payload:
    """The payload as its catalogue struct; raises `msgspec.ValidationError` if it does not fit."""
    cls = BY_TYPE[type_]
    if version != cls.VERSION:
        raise msgspec.ValidationError(f"{type_} has version {cls.VERSION}, not {version}")
    return msgspec.convert(payload, cls, from_attributes=False, strict=False)
