"""Request body decoding and the rules that depend on the clock or configuration.

A body is decoded as a whole before anything is queued: a batch with one bad element is
refused whole (422 naming the element's field) and writes nothing.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import msgspec
from aiohttp import web

from service.api.errors import bad_request, from_validation, unprocessable
from service.api.schemas import JSON_INT_MAX, JSON_INT_MIN, Heartbeat, HeartbeatBatch

T = TypeVar("T")

_json = msgspec.json.Decoder()


async def read_json(request: web.Request) -> Any:
    body = await request.read()
    if not body.strip():
        raise bad_request("request body is empty; a JSON object is required", code="empty_body")
    try:
        value = _json.decode(body)
    except msgspec.DecodeError as exc:  # the parser's own words: what and where (byte offset)
        raise bad_request(f"malformed JSON: {exc}", code="malformed_json") from None
    except UnicodeDecodeError:
        raise bad_request("malformed JSON: not valid UTF-8", code="malformed_json") from None
    except RecursionError:  # msgspec's decoder counts nesting against the interpreter's limit
        raise bad_request("malformed JSON: nested too deeply", code="malformed_json") from None
    if not isinstance(value, dict):
        raise unprocessable("the body must be a JSON object", code="invalid_type")
    # A decoded string can hold U+0000 only if the document spelled it `\u0000` (a raw NUL
    # byte is malformed JSON), so most bodies skip the per-string search.
    check_storable(value, nul_possible=b"\\u0000" in body)
    return value


def convert(value: Any, type_: type[T]) -> T:
    try:
        return msgspec.convert(value, type_)
    except msgspec.ValidationError as exc:
        raise from_validation(exc) from None


async def decode(request: web.Request, type_: type[T]) -> T:
    return convert(await read_json(request), type_)


def check_timestamp(
    ts: datetime | None, field: str, *, now: datetime, window: timedelta, skew: timedelta
) -> datetime:
    """`ts` (default: now) must lie in [now - window, now + skew]: older rows would be dropped
    by retention at once, and future ones mean a wrong device clock."""
    if ts is None:
        return now
    if ts > now + skew:
        raise unprocessable(
            f"timestamp is more than {int(skew.total_seconds())} s in the future",
            field=field,
            code="timestamp_in_future",
        )
    if ts < now - window:
        raise unprocessable(
            f"timestamp is older than the retention window ({window})",
            field=field,
            code="timestamp_too_old",
        )
    return ts.astimezone(UTC)


async def heartbeats_of(request: web.Request, max_batch: int) -> tuple[list[Heartbeat], bool]:
    """One heartbeat or `{"heartbeats": [...]}`; returns (heartbeats, was_batch)."""
    value = await read_json(request)
    if "heartbeats" in value:
        batch = convert(value, HeartbeatBatch)
        if len(batch.heartbeats) > max_batch:
            raise unprocessable(
                f"at most {max_batch} heartbeats per request", field="heartbeats", code="batch_too_large"
            )
        return batch.heartbeats, True
    return [convert(value, Heartbeat)], False


def query_limit(request: web.Request, default: int = 100, maximum: int = 1000) -> int:
    raw = request.query.get("limit")
    if raw is None:
        return default
    try:
        limit = int(raw)
    except ValueError:
        raise bad_request("limit must be an integer", field="limit") from None
    if not 1 <= limit <= maximum:
        raise bad_request(f"limit must be between 1 and {maximum}", field="limit")
    return limit


def query_int(
    request: web.Request, name: str, minimum: int, maximum: int, default: int | None = None
) -> int | None:
    """An integer query parameter in [minimum, maximum]; anything else is 422 naming it."""
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise unprocessable(f"{name} must be an integer", field=name) from None
    if not minimum <= value <= maximum:
        raise unprocessable(
            f"{name} must be between {minimum} and {maximum}", field=name, code="out_of_range"
        )
    return value


def query_choice(
    request: web.Request, name: str, choices: tuple[str, ...], default: str | None = None
) -> str | None:
    """A query parameter that must be one of `choices`: 422 naming it otherwise."""
    raw = request.query.get(name)
    if raw is None:
        return default
    if raw not in choices:
        raise unprocessable(f"{name} must be one of {', '.join(choices)}", field=name)
    return raw


def query_timestamp(request: web.Request, name: str) -> datetime | None:
    """An RFC 3339 timestamp with a UTC offset: 422 naming the parameter otherwise."""
    raw = request.query.get(name)
    if raw is None:
        return None
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise unprocessable(f"{name} must be an RFC 3339 timestamp", field=name) from None
    if value.tzinfo is None:
        raise unprocessable(f"{name} must carry a UTC offset", field=name)
    return value


def query_seconds(request: web.Request, name: str, default: timedelta, maximum: float) -> timedelta:
    """A non-negative number of seconds, at most `maximum`: 422 naming the parameter otherwise."""
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise unprocessable(f"{name} must be a number of seconds", field=name) from None
    if not (math.isfinite(value) and 0 <= value <= maximum):
        raise unprocessable(f"{name} must be between 0 and {maximum:g} seconds", field=name)
    return timedelta(seconds=value)


def query_text(request: web.Request, name: str, max_length: int) -> str | None:
    """A non-empty query parameter of at most `max_length` characters; else 422 naming it."""
    raw = request.query.get(name)
    if raw is not None and (not 1 <= len(raw) <= max_length or "\x00" in raw):
        raise unprocessable(f"{name} must be 1 to {max_length} characters (no U+0000)", field=name)
    return raw


MAX_DEPTH = 32


def _bad_number(v: Any) -> bool:
    kind = type(v)
    if kind is int:
        return not JSON_INT_MIN <= v <= JSON_INT_MAX
    return kind is float and not math.isfinite(v)


def _violates(value: Any, nul_possible: bool) -> bool:
    """Whether `value` holds a NUL (when `nul_possible`), a number out of range, or nests deeper
    than MAX_DEPTH: the fast pass, without building field paths (bodies are nearly always fine)."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        v, depth = stack.pop()
        kind = type(v)
        if kind is str:
            if nul_possible and "\x00" in v:
                return True
        elif kind is dict:
            if depth > MAX_DEPTH:
                return True
            for key, item in v.items():
                if nul_possible and "\x00" in key:
                    return True
                if type(item) is not str or nul_possible:
                    stack.append((item, depth + 1))
        elif kind is list:
            if depth > MAX_DEPTH:
                return True
            stack.extend((item, depth + 1) for item in v if type(item) is not str or nul_possible)
        elif kind is int:
            if not JSON_INT_MIN <= v <= JSON_INT_MAX:
                return True
        elif kind is float and not math.isfinite(v):
            return True
    return False


def check_storable(value: Any, *, nul_possible: bool = True) -> None:
    """Refuse, naming the field, what the database cannot store or the writer cannot encode:
    text with U+0000 (PostgreSQL text and jsonb cannot hold it), integers outside
    `JSON_INT_MIN..JSON_INT_MAX` and non-finite floats (anywhere, free-form JSON included:
    typed fields have their own, narrower, bounds), and objects and arrays nested more than
    MAX_DEPTH deep (no telemetry needs that, and deeper values would fail later, when the
    stored value is encoded again). Iterative, so no depth of input can exhaust the
    interpreter's stack. `read_json` applies it to every body."""
    if not _violates(value, nul_possible):
        return
    stack: list[tuple[Any, str, int]] = [(value, "", 0)]
    while stack:
        v, path, depth = stack.pop()
        if isinstance(v, str):
            if "\x00" in v:
                raise unprocessable(
                    "text must not contain NUL (U+0000) characters",
                    field=path or None,
                    code="invalid_character",
                )
            continue
        if _bad_number(v):
            raise unprocessable(
                f"numbers must be finite and integers within {JSON_INT_MIN}..{JSON_INT_MAX}",
                field=path or None,
                code="number_out_of_range",
            )
        if isinstance(v, dict | list) and depth > MAX_DEPTH:
            raise unprocessable(
                f"objects and arrays must not be nested more than {MAX_DEPTH} deep",
                field=path or None,
                code="too_deep",
            )
        children: list[tuple[Any, str, int]] = []
        if isinstance(v, dict):
            for key, item in v.items():
                children.append((key, path, depth))
                children.append((item, f"{path}.{key}" if path else str(key), depth + 1))
        elif isinstance(v, list):
            children = [(item, f"{path}[{i}]", depth + 1) for i, item in enumerate(v)]
        stack.extend(reversed(children))
