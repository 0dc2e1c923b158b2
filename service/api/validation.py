"""Request body decoding and the rules that depend on the clock or configuration.

A body is decoded as a whole before anything is queued: a batch with one bad element is
refused whole (422 naming the element's field) and writes nothing.

What decoding may cost the event loop, stated and bounded (measured by `benchmarks/hostile.py`):
the body is read within `service.api.bodies`'s limits (4 KB before authentication, 1 MB after);
it may hold at most MAX_JSON_VALUES values, counted on the raw bytes before anything is decoded;
msgspec then decodes it in one step (a few ms at most at that count), and the walk that checks
what the database can store runs in slices of WALK_SLICE values with the loop free between
slices, one walk longer than a slice at a time, so a large hostile body slows its own request,
not the others.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Generator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import msgspec
from aiohttp import web

from service.api import bodies
from service.api.auth import is_authenticated
from service.api.errors import ApiError, bad_request, from_validation, unprocessable
from service.api.schemas import JSON_INT_MAX, JSON_INT_MIN
from service.api.state import services

T = TypeVar("T")

_json = msgspec.json.Decoder()

# Values the storability walk visits between two yields to the event loop (well under 1 ms).
WALK_SLICE = 250
# A body holds at most this many JSON values, counted before decoding as the separators that
# precede every value but the first (`,` `:` `[`, wherever they stand: an upper bound), so the
# decode of any body costs at most a few ms and its walk about 25 ms, in slices. A full
# 500-heartbeat batch with a dozen `extra` keys each holds about 12,000.
MAX_JSON_VALUES = 20_000


def body_rules(request: web.Request) -> bodies.BodyRules:
    """The limits a body read now is held to: the authenticated ones once the handler has
    authenticated its caller, else the pre-authentication ones (`service.api.bodies`)."""
    settings = services(request).settings
    timeout = settings.http_body_timeout.total_seconds()
    if is_authenticated(request):
        return bodies.BodyRules(settings.max_body_bytes, compressed=True, timeout=timeout)
    return bodies.BodyRules(settings.enroll_max_body_bytes, compressed=False, timeout=timeout)


async def read_json(request: web.Request) -> Any:
    svc = services(request)
    rules = body_rules(request)
    reserve = bodies.check_declared(request, rules)
    with svc.body_budget.reserve(reserve, svc.settings.retry_after_seconds):
        body = await bodies.read(request, rules)
        if not body.strip():
            raise bad_request("request body is empty; a JSON object is required", code="empty_body")
        if body.count(b",") + body.count(b":") + body.count(b"[") >= MAX_JSON_VALUES:
            raise unprocessable(
                f"a body may hold at most {MAX_JSON_VALUES} JSON values", code="too_many_values"
            )
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
        await check_storable_sliced(value, svc.long_walks, nul_possible=b"\\u0000" in body)
        return value


def convert(value: Any, type_: type[T]) -> T:
    try:
        return msgspec.convert(value, type_)
    except msgspec.ValidationError as exc:
        raise from_validation(exc) from None


async def decode(request: web.Request, type_: type[T]) -> T:
    return convert(await read_json(request), type_)


def check_received(request: web.Request, ts: datetime | None, field: str, table: str) -> datetime:
    """`check_timestamp` at now against `table`'s window in force and the configured skew."""
    svc = services(request)
    return check_timestamp(
        ts, field, now=datetime.now(UTC), window=svc.windows.window(table), skew=svc.settings.max_clock_skew
    )


def check_timestamp(
    ts: datetime | None, field: str, *, now: datetime, window: timedelta, skew: timedelta
) -> datetime:
    """`ts` (default: now) must lie in [now - window, now + skew]: older rows would be dropped
    by retention at once (`window` is the table's window in force, `service.retention.in_force`),
    and future ones mean a wrong device clock."""
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


MAX_DEPTH = 32


def _bad_number(v: Any) -> bool:
    kind = type(v)
    if kind is int:
        return not JSON_INT_MIN <= v <= JSON_INT_MAX
    return kind is float and not math.isfinite(v)


def _children(v: Any) -> Iterator[tuple[str | int | None, Any]]:
    """An object's keys (as `(None, key)`) and items, or an array's items, one at a time: a
    container of any size costs the walk one step per child, never one step for all."""
    if type(v) is dict:
        for key, item in v.items():
            yield None, key
            yield key, item
    else:
        yield from enumerate(v)


def _violates(value: Any, nul_possible: bool) -> Generator[None, None, bool]:
    """Whether `value` holds a NUL (when `nul_possible`), a number out of range, or nests deeper
    than MAX_DEPTH: the fast pass, without building field paths (bodies are nearly always fine).
    Yields every WALK_SLICE values, so a driver can give the loop its turn."""
    return (yield from _walk(value, nul_possible, paths=False)) is not None


def _first_violation(value: Any) -> Generator[None, None, ApiError | None]:
    """The refusal naming the first field (in document order) that `_violates` objects to;
    yields like `_violates`."""
    return (yield from _walk(value, True, paths=True))


def _walk(value: Any, nul_possible: bool, *, paths: bool) -> Generator[None, None, ApiError | None]:
    # A stack of open containers, each with its iterator of children, its path and depth; the
    # path of a child is only built when `paths` (the second pass, after the first found one).
    stack: list[tuple[Iterator[tuple[str | int | None, Any]], str, int]] = []
    seen = 0
    current: Any = value
    path, depth = "", 0
    while True:
        seen += 1
        if seen % WALK_SLICE == 0:
            yield
        kind = type(current)
        if kind is str:
            if nul_possible and "\x00" in current:
                return unprocessable(
                    "text must not contain NUL (U+0000) characters",
                    field=path or None,
                    code="invalid_character",
                )
        elif kind is dict or kind is list:
            if depth > MAX_DEPTH:
                return unprocessable(
                    f"objects and arrays must not be nested more than {MAX_DEPTH} deep",
                    field=path or None,
                    code="too_deep",
                )
            stack.append((_children(current), path, depth))
        elif _bad_number(current):
            return unprocessable(
                f"numbers must be finite and integers within {JSON_INT_MIN}..{JSON_INT_MAX}",
                field=path or None,
                code="number_out_of_range",
            )
        # The next value: the next child of the innermost open container.
        while stack:
            children, parent, parent_depth = stack[-1]
            step = next(children, _DONE)
            if step is _DONE:
                stack.pop()
                continue
            key, current = step
            if key is None:  # an object's key: a string at the object's own path and depth
                path, depth = parent, parent_depth
            else:
                depth = parent_depth + 1
                if paths:
                    path = (
                        f"{parent}[{key}]" if type(key) is int else f"{parent}.{key}" if parent else str(key)
                    )
            break
        else:
            return None


_DONE = (None, None)


def _run(walk: Generator[None, None, T]) -> T:
    while True:
        try:
            next(walk)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]


async def _run_sliced(walk: Generator[None, None, T], turns: asyncio.Semaphore) -> T:
    try:
        next(walk)
    except StopIteration as done:  # done within its first slice: the common case
        return done.value  # type: ignore[no-any-return]
    async with turns:
        while True:
            await asyncio.sleep(0)  # the loop's turn between two slices
            try:
                next(walk)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]


def check_storable(value: Any, *, nul_possible: bool = True) -> None:
    """Refuse, naming the field, what the database cannot store or the writer cannot encode:
    text with U+0000 (PostgreSQL text and jsonb cannot hold it), integers outside
    `JSON_INT_MIN..JSON_INT_MAX` and non-finite floats (anywhere, free-form JSON included:
    typed fields have their own, narrower, bounds), and objects and arrays nested more than
    MAX_DEPTH deep (no telemetry needs that, and deeper values would fail later, when the
    stored value is encoded again). Iterative, so no depth of input can exhaust the
    interpreter's stack. `read_json` applies it to every body, in slices
    (`check_storable_sliced`)."""
    if _run(_violates(value, nul_possible)):
        error = _run(_first_violation(value))
        if error is not None:
            raise error


async def check_storable_sliced(value: Any, turns: asyncio.Semaphore, *, nul_possible: bool = True) -> None:
    """`check_storable`, giving the event loop its turn every WALK_SLICE values. Walks longer
    than a slice take `turns` (one at a time): K hostile bodies at once cost the loop one slice
    per turn, not K."""
    if await _run_sliced(_violates(value, nul_possible), turns):
        error = await _run_sliced(_first_violation(value), turns)
        if error is not None:
            raise error
