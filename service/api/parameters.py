"""Query and path parameters: each endpoint's are one `Parameters` struct, named in the endpoint
table (`service.api.routes`), parsed by `parse` before its handler runs and documented from the
same struct (`service.api.openapi_doc`), so what the document says and what runs cannot differ.

Guarantees of `parse`:

* Every malformed or out-of-range value is `422` naming the parameter (`error.field`), before
  the handler runs: no handler ever sees a value its struct does not allow.
* Values are read strictly from their text: an integer is ASCII digits with an optional `-`
  (not `1e3`, `5.0`, ` 5`, `+5` or `1_0`), a number is a finite decimal, a time is RFC 3339
  with a UTC offset (handed over in UTC), a choice is one of its literals exactly, and no value
  holds U+0000 (PostgreSQL text cannot). `null` is text like any other, never "absent".
* A parameter given more than once counts with its first value, as aiohttp's `query.get` reads
  it; parameters the struct does not declare are ignored, never interpreted (proxies and
  browsers add cache busters; the document lists what is read).
* Path parameters are fields whose names appear in the path template; they are required. A
  text path id that names nothing is the handler's `404`; a typed one (`token_id`) that is not
  of its type is `422` like a query value.
* Parsing reads only the request line (at most aiohttp's 8 KiB): it costs microseconds, needs
  no database and runs before authentication, so a malformed request is `422` whoever sends
  it (the rules are public: `GET /openapi.json`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import Annotated, Any, Literal, TypeVar

import msgspec
from msgspec import Meta, Struct
from msgspec import inspect as mi

from service.api.errors import ApiError, unprocessable
from service.api.schemas import COMMAND_STATUSES, IDENTIFIER, INT8_MAX, PackageName, Tag
from service.audit.log import AuditAction
from service.events.catalogue import EVENT_TYPES
from service.fleet.presence import PRESENCES
from service.webhooks.subscriptions import DELIVERY_STATUSES


class Parameters(Struct, kw_only=True, frozen=True):
    """An endpoint's path and query parameters: field names are the parameters' names (use
    `msgspec.field(name=...)` for one that is a Python keyword), types and `Meta` their rules,
    `Meta(description=...)` their documentation. A field without a default is required (put
    required ones first, or declare the subclass `kw_only=True`: msgspec does not inherit it)."""


P = TypeVar("P", bound=Parameters)

# --- the rules parameters share -----------------------------------------------------------------

Limit = Annotated[int, Meta(ge=1, le=1000, description="Page size")]
DEFAULT_LIMIT = 100
DatabaseId = Annotated[int, Meta(ge=1, le=INT8_MAX, extra_json_schema={"format": "int64"})]


def _before(what: str) -> Any:
    """The keyset cursor of a newest-first page: the id of the last row of the previous page."""
    return Annotated[
        int,
        Meta(
            ge=1,
            le=INT8_MAX,
            extra_json_schema={"format": "int64"},
            description=f"The id of the last {what} of the previous page",
        ),
    ]


Before = _before("event")
Timestamp = Annotated[datetime, Meta(tz=True)]
# A path id is looked up as given: any text names a resource or none (404).
PathId = Annotated[str, Meta(min_length=1)]
TextFilter = Annotated[str, Meta(min_length=1, max_length=64)]
DeviceIdFilter = Annotated[
    str, Meta(min_length=1, max_length=128, pattern=IDENTIFIER, description="Only this device's events")
]
# `older_than` beyond this names nothing a command table keeps (the default window is 90 days).
MAX_AGE_SECONDS = 10 * 365 * 86400
_EVENT_TYPE = "|".join(re.escape(t) for t in EVENT_TYPES)
# Every type once is 300 characters. The bound keeps the request line within aiohttp's 8 KiB
# with every other parameter at its longest, even percent-encoded from 4-byte characters
# (tests/api/test_parameters.py checks every endpoint's query so).
EventTypes = Annotated[
    str,
    Meta(
        max_length=400,
        pattern=f"^({_EVENT_TYPE})(,({_EVENT_TYPE}))*\\Z",
        description="Comma-separated event types (the keys of x-event-catalogue); default: all",
    ),
]
EventCursor = Annotated[
    str,
    Meta(
        max_length=40,
        pattern=r"^(0|[1-9][0-9]{0,18})-(0|[1-9][0-9]{0,18})\Z",
        description="An event's cursor (or a page's next_cursor): the events after it",
    ),
]
Presence = Literal[PRESENCES]  # type: ignore[valid-type]
CommandStatus = Literal[COMMAND_STATUSES]  # type: ignore[valid-type]
ENROLLMENT_OUTCOMES = ("enrolled", "refused", "already_enrolled", "banned")
EnrollmentOutcome = Literal[ENROLLMENT_OUTCOMES]  # type: ignore[valid-type]
Bucket = Literal["1h", "1d"]

# --- each endpoint's parameters -------------------------------------------------------------------


class DeviceIdPath(Parameters):
    device_id: PathId


class RequestIdPath(Parameters):
    request_id: PathId


class BuildIdPath(Parameters):
    build_id: PathId


class TokenIdPath(Parameters):
    token_id: DatabaseId


DeliveryBefore = _before("delivery")


class WebhookIdPath(Parameters):
    webhook_id: DatabaseId


class WebhookDeliveriesQuery(WebhookIdPath, kw_only=True):
    status: Literal[DELIVERY_STATUSES] | None = None  # type: ignore[valid-type]
    limit: Limit = DEFAULT_LIMIT
    before: DeliveryBefore | None = None


BulkAfter = Annotated[str, Meta(min_length=1, max_length=128, description="next_after of the previous page")]


class BulkIdPath(Parameters):
    bulk_id: DatabaseId


class BulkQuery(BulkIdPath, kw_only=True):
    after: BulkAfter | None = None
    limit: Limit = DEFAULT_LIMIT


class DevicePage(Parameters):
    """A device's newest rows (heartbeats, dispatches)."""

    device_id: PathId
    limit: Limit = DEFAULT_LIMIT


class PendingCommandsQuery(Parameters):
    status: Literal["pending"] = "pending"
    limit: Limit = DEFAULT_LIMIT


OlderThan = Annotated[
    float, Meta(ge=0, le=MAX_AGE_SECONDS, description="Seconds; default TELEMETRY_COMMAND_STUCK_SECONDS")
]


class StuckCommandsQuery(Parameters):
    status: Literal["pending", "delivered"] = "pending"
    older_than: OlderThan | None = None
    limit: Limit = DEFAULT_LIMIT


class DeviceCommandsQuery(Parameters):
    device_id: PathId
    status: CommandStatus | None = None
    before: Annotated[Timestamp, Meta(description="Commands dispatched before this time")] | None = None
    limit: Limit = DEFAULT_LIMIT


class ApkVersionsQuery(Parameters):
    package_name: PackageName | None = None
    limit: Limit = DEFAULT_LIMIT


# Issued cursors are under 128 characters; the bound keeps a request line within aiohttp's 8 KiB
# even with every other parameter at its longest, percent-encoded.
DeviceListCursor = Annotated[
    str, Meta(min_length=1, max_length=256, description="next_cursor of the previous page (same filters)")
]


# The device list's and the fleet summary's `tag=`: one declaration, one rule.
TagFilter = Annotated[Tag, Meta(description="Only devices with this tag")]


class DeviceListQuery(Parameters):
    presence: Presence | None = None
    app_version: Annotated[TextFilter, Meta(description="Last app version equals")] | None = None
    status: Annotated[TextFilter, Meta(description="Last status equals")] | None = None
    battery_below: Annotated[int, Meta(ge=0, le=101, description="Last battery below")] | None = None
    q: Annotated[str, Meta(min_length=1, max_length=128, description="Device id prefix")] | None = None
    tag: TagFilter | None = None
    limit: Limit = DEFAULT_LIMIT
    cursor: DeviceListCursor | None = None


class FleetSummaryQuery(Parameters):
    tag: TagFilter | None = None


class AuditQuery(Parameters):
    operator: (
        Annotated[str, Meta(min_length=1, max_length=160, description="Only this operator's")] | None
    ) = None
    action: Literal[tuple(a.value for a in AuditAction)] | None = None  # type: ignore[valid-type]
    target: (
        Annotated[str, Meta(min_length=1, max_length=300, description="Only this target (kind:id)")] | None
    ) = None
    before: _before("audit entry") | None = None  # type: ignore[valid-type]
    limit: Limit = DEFAULT_LIMIT


class DeviceEventsQuery(Parameters):
    device_id: PathId
    limit: Limit = DEFAULT_LIMIT
    before: Before | None = None


class EnrollmentEventsQuery(Parameters):
    token_id: DatabaseId | None = None
    outcome: EnrollmentOutcome | None = None
    limit: Limit = DEFAULT_LIMIT
    before: Before | None = None


class EventStreamQuery(Parameters):
    after: EventCursor | None = None
    types: EventTypes | None = None
    device_id: DeviceIdFilter | None = None


class EventFeedQuery(EventStreamQuery):
    limit: Limit = DEFAULT_LIMIT


class FleetHistoryQuery(Parameters):
    from_: Annotated[Timestamp, Meta(description="Default: a span before `to`")] | None = msgspec.field(
        default=None, name="from"
    )
    to: Annotated[Timestamp, Meta(description="Default: now")] | None = None
    bucket: Bucket = "1h"


class DeviceHistoryQuery(FleetHistoryQuery, kw_only=True):
    device_id: PathId


# --- the parser -----------------------------------------------------------------------------------

_INTEGER = re.compile(r"-?[0-9]{1,19}")
_NUMBER = re.compile(r"-?[0-9]{1,20}(\.[0-9]{1,20})?([eE][-+]?[0-9]{1,3})?")


@dataclass(frozen=True, slots=True)
class _Field:
    name: str  # as the client spells it
    attr: str  # as the struct holds it
    kind: Literal["int", "float", "text", "time"]
    required: bool
    choices: tuple[str, ...] | None  # a choice's values, to name them when refused


def _bare(t: mi.Type) -> mi.Type:
    """`t` without `| None` (an optional parameter is one that may be absent) and without its
    documentation (`Meta(description=...)`)."""
    while isinstance(t, mi.Metadata):
        t = t.type
    if isinstance(t, mi.UnionType):
        (t,) = [u for u in t.types if not isinstance(u, mi.NoneType)]
    while isinstance(t, mi.Metadata):
        t = t.type
    return t


def _choices(t: mi.Type) -> tuple[str, ...] | None:
    match _bare(t):
        case mi.LiteralType(values=values):
            return tuple(str(v) for v in values)
        case mi.EnumType(cls=cls):
            return tuple(str(member.value) for member in cls)
    return None


def _kind(t: mi.Type) -> Literal["int", "float", "text", "time"]:
    match _bare(t):
        case mi.IntType():
            return "int"
        case mi.FloatType():
            return "float"
        case mi.DateTimeType():
            return "time"
        case mi.StrType() | mi.LiteralType() | mi.EnumType():
            return "text"
    raise TypeError(f"a parameter cannot be of type {t!r}: int, float, str, datetime or a choice")


@cache
def fields_of(parameters: type[Parameters]) -> tuple[_Field, ...]:
    """The parameters `parameters` declares, checked once: a type the parser cannot read from
    text is a TypeError when the endpoint table is built, not a 500 on the first request."""
    info = mi.type_info(parameters)
    assert isinstance(info, mi.StructType)
    return tuple(
        _Field(f.encode_name, f.name, _kind(f.type), f.required, _choices(f.type)) for f in info.fields
    )


def _refuse(name: str, message: str, code: str = "invalid_value") -> ApiError:
    return unprocessable(f"{name}: {message}", field=name, code=code)


def _value(f: _Field, raw: str) -> Any:
    """The JSON value `raw` stands for, for msgspec to check against the field's rules."""
    if "\x00" in raw:
        raise _refuse(f.name, "must not contain U+0000")
    if f.kind == "int":
        if _INTEGER.fullmatch(raw) is None:
            if re.fullmatch(r"-?[0-9]+", raw):
                raise _refuse(f.name, "is out of range", code="out_of_range")
            raise _refuse(f.name, "must be an integer (ASCII digits)")
        return int(raw)
    if f.kind == "float":
        number = float(raw) if _NUMBER.fullmatch(raw) is not None else math.inf
        if not math.isfinite(number):  # 1e999 is spelled like a number but is not one
            raise _refuse(f.name, "must be a finite decimal number")
        return number
    if f.choices is not None and raw not in f.choices:
        raise _refuse(f.name, f"must be one of {', '.join(f.choices)}")
    return raw


def _to_utc(name: str, value: datetime) -> datetime:
    try:
        return value.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00:00+14:00 is before year 1 in UTC
        raise _refuse(name, "must lie between years 1 and 9999 in UTC", code="out_of_range") from None


def parse(parameters: type[P], path: Mapping[str, str], query: Mapping[str, str]) -> P:
    """`parameters` from a request's path (`match_info`) and query, or a 422 naming the first
    parameter that breaks its rule (in declaration order)."""
    values: dict[str, Any] = {}
    for f in fields_of(parameters):
        raw = path.get(f.name) if f.name in path else query.get(f.name)
        if raw is not None:
            values[f.name] = _value(f, raw)
    try:
        parsed = msgspec.convert(values, parameters)
    except msgspec.ValidationError as exc:
        raise _from_validation(exc) from None
    utc = {
        f.attr: _to_utc(f.name, v)
        for f in fields_of(parameters)
        if f.kind == "time" and isinstance(v := getattr(parsed, f.attr), datetime)
    }
    return msgspec.structs.replace(parsed, **utc) if utc else parsed


_AT = re.compile(r" - at `\$\.(?P<name>[^`.\[]+)`$")
_MISSING = re.compile(r"Object missing required field `(?P<name>[^`]+)`")


def _from_validation(exc: msgspec.ValidationError) -> ApiError:
    # Parameters are flat, so msgspec names at most one level: `$.limit`.
    text = str(exc)
    if (m := _AT.search(text)) is not None:
        message = text[: m.start()]
        if message.startswith("Expected `str` matching regex"):
            message = "does not match its pattern (GET /openapi.json)"
        return _refuse(m["name"], message[0].lower() + message[1:])
    if (m := _MISSING.match(text)) is not None:
        return _refuse(m["name"], "is required")
    return unprocessable(text)
