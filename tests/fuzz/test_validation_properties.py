"""Property tests of the validators alone (`service.api.validation` on the msgspec schemas): every
input outside a rule is refused with 422 naming its field, every input inside is accepted as is."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from aiohttp.test_utils import make_mocked_request
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from service.api.errors import ApiError
from service.api.parameters import DevicePage, parse
from service.api.schemas import JSON_INT_MAX, JSON_INT_MIN, Heartbeat, HeartbeatBatch
from service.api.validation import MAX_DEPTH, check_storable, check_timestamp, convert
from tests.fuzz.strategies import JSON, OFFSETS, heartbeats

FIXED = settings(max_examples=200, derandomize=True, database=None, deadline=None)
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
WINDOW = timedelta(days=2)
SKEW = timedelta(minutes=5)


def refusal(call: Any, *args: Any) -> ApiError:
    with pytest.raises(ApiError) as caught:
        call(*args)
    return caught.value


out_of_range = st.integers(max_value=-1) | st.integers(min_value=101)


@FIXED
@given(battery=out_of_range)
def test_any_battery_outside_0_to_100_is_refused_naming_the_field(battery: int) -> None:
    error = refusal(convert, {"status": "ok", "battery_pct": battery}, Heartbeat)
    assert (error.status, error.field) == (422, "battery_pct")


@FIXED
@given(battery=out_of_range, good=st.lists(heartbeats(), min_size=1, max_size=5), data=st.data())
def test_one_bad_battery_in_a_batch_is_refused_naming_the_element(
    battery: int, good: list[dict[str, Any]], data: st.DataObject
) -> None:
    at = data.draw(st.integers(0, len(good)))
    batch = [*good[:at], {"status": "ok", "battery_pct": battery}, *good[at:]]
    error = refusal(convert, {"heartbeats": batch}, HeartbeatBatch)
    assert (error.status, error.field) == (422, f"heartbeats[{at}].battery_pct")


@FIXED
@given(battery=st.integers(0, 100) | st.floats() | st.text() | st.booleans() | st.none())
def test_battery_is_an_integer_in_range_or_refused(battery: Any) -> None:
    body = {"status": "ok", "battery_pct": battery}
    if type(battery) is int:
        assert convert(body, Heartbeat).battery_pct == battery
    else:
        error = refusal(convert, body, Heartbeat)
        assert (error.status, error.field) == (422, "battery_pct")


@FIXED
@given(beyond=st.integers(min_value=1, max_value=10**12), tz=OFFSETS)
def test_any_ts_beyond_the_skew_is_refused(beyond: int, tz: Any) -> None:
    ts = (NOW + SKEW + timedelta(microseconds=beyond)).astimezone(tz)
    error = refusal(lambda: check_timestamp(ts, "ts", now=NOW, window=WINDOW, skew=SKEW))
    assert (error.status, error.field, error.code) == (422, "ts", "timestamp_in_future")


@FIXED
@given(before=st.integers(min_value=1, max_value=10**12), tz=OFFSETS)
def test_any_ts_older_than_the_window_is_refused(before: int, tz: Any) -> None:
    ts = (NOW - WINDOW - timedelta(microseconds=before)).astimezone(tz)
    error = refusal(lambda: check_timestamp(ts, "heartbeats[3].ts", now=NOW, window=WINDOW, skew=SKEW))
    assert (error.status, error.field, error.code) == (422, "heartbeats[3].ts", "timestamp_too_old")


@FIXED
@given(
    offset=st.integers(
        min_value=-WINDOW // timedelta(microseconds=1), max_value=SKEW // timedelta(microseconds=1)
    ),
    tz=OFFSETS,
)
def test_any_ts_inside_the_window_is_kept_as_the_same_instant_in_utc(offset: int, tz: Any) -> None:
    ts = (NOW + timedelta(microseconds=offset)).astimezone(tz)
    kept = check_timestamp(ts, "ts", now=NOW, window=WINDOW, skew=SKEW)
    assert kept == ts and kept.utcoffset() == timedelta(0)


@FIXED
@given(body=heartbeats(), tz=OFFSETS, offset=st.integers(0, 10**10))
def test_any_valid_heartbeat_round_trips_through_json_and_validation(
    body: dict[str, Any], tz: Any, offset: int
) -> None:
    body["ts"] = (NOW - timedelta(microseconds=offset)).astimezone(tz).isoformat()
    raw = msgspec.json.decode(msgspec.json.encode(body))
    check_storable(raw)
    decoded = convert(raw, Heartbeat)
    assert decoded.ts == datetime.fromisoformat(body["ts"])
    again = msgspec.to_builtins(decoded)
    del again["ts"], body["ts"]
    assert {k: v for k, v in again.items() if v is not None} == {
        k: v for k, v in body.items() if v is not None
    }


@FIXED
@given(body=heartbeats(), data=st.data())
def test_a_nul_anywhere_in_text_is_refused_naming_where(body: dict[str, Any], data: st.DataObject) -> None:
    fields = [k for k in ("status", "app_version", "network") if body.get(k)]
    assume(fields)
    name = data.draw(st.sampled_from(fields))
    at = data.draw(st.integers(0, len(body[name]) - 1))
    body[name] = body[name][:at] + "\x00" + body[name][at + 1 :]
    error = refusal(check_storable, body)
    assert (error.status, error.field, error.code) == (422, name, "invalid_character")


@FIXED
@given(leaf=JSON, depth=st.integers(min_value=MAX_DEPTH + 1, max_value=5000), as_list=st.booleans())
def test_any_nesting_deeper_than_the_limit_is_refused_without_exhausting_the_stack(
    leaf: Any, depth: int, as_list: bool
) -> None:
    value = leaf
    for _ in range(depth):
        value = [value] if as_list else {"a": value}
    error = refusal(check_storable, {"extra": value})
    assert (error.status, error.code) == (422, "too_deep")
    assert error.field is not None and error.field.startswith("extra")


@FIXED
@given(raw=st.text(max_size=30) | st.integers(-(10**30), 10**30).map(str))
def test_any_limit_is_an_integer_in_range_or_refused_naming_limit(raw: str) -> None:
    request = make_mocked_request("GET", "/v1/devices/x/heartbeats", headers={})
    request = request.clone(rel_url=request.rel_url.with_query({"limit": raw}))
    try:
        limit = parse(DevicePage, {"device_id": "x"}, request.query).limit
    except ApiError as error:
        assert (error.status, error.field) == (422, "limit")
    else:
        assert 1 <= limit <= 1000 and limit == int(raw) and raw.isascii()


beyond_bigint = st.integers(max_value=JSON_INT_MIN - 1) | st.integers(min_value=JSON_INT_MAX + 1)


@FIXED
@given(body=heartbeats(), number=beyond_bigint, path=st.lists(st.sampled_from(["k", 0]), max_size=6))
def test_an_integer_past_bigint_anywhere_in_extra_is_refused_naming_where(
    body: dict[str, Any], number: int, path: list[str | int]
) -> None:
    value: Any = number
    name = ""
    for step in reversed(path):
        value = {step: value} if step == "k" else [value]
    for step in path:
        name += ".k" if step == "k" else "[0]"
    body["extra"] = {"n": value}
    error = refusal(check_storable, body)
    assert (error.status, error.code, error.field) == (422, "number_out_of_range", "extra.n" + name)


@FIXED
@given(number=st.integers(JSON_INT_MIN, JSON_INT_MAX) | st.floats(allow_nan=False, allow_infinity=False))
def test_any_finite_number_within_bigint_is_accepted_in_extra(number: int | float) -> None:
    check_storable({"status": "ok", "battery_pct": 5, "extra": {"n": [number, {"m": number}]}})


@FIXED
@given(number=st.sampled_from([float("inf"), float("-inf"), float("nan")]))
def test_a_non_finite_float_is_refused(number: float) -> None:
    error = refusal(check_storable, {"extra": {"f": number}})
    assert (error.status, error.field) == (422, "extra.f")
