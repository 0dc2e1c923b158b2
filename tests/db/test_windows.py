"""Windows as operators type them, and as `show` prints them."""

from __future__ import annotations

from datetime import timedelta

import pytest

from service.db.windows import WindowError, format_window, parse_window


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2d", timedelta(days=2)),
        ("36h", timedelta(hours=36)),
        ("90m", timedelta(minutes=90)),
        ("45s", timedelta(seconds=45)),
        ("1w", timedelta(weeks=1)),
        ("1d12h", timedelta(hours=36)),
        ("3600", timedelta(hours=1)),
        ("1.5h", timedelta(minutes=90)),
        (" 2D ", timedelta(days=2)),
    ],
)
def test_accepted_windows(text: str, expected: timedelta) -> None:
    assert parse_window(text) == expected


@pytest.mark.parametrize(
    "text", ["", "d", "2x", "2 days", "-3h", "h2", "1d-2h", "0", "0s", "0d0h", "999999999999d"]
)
def test_refused_windows_say_what_is_accepted(text: str) -> None:
    with pytest.raises(WindowError) as info:
        parse_window(text)
    assert repr(text) in str(info.value)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (timedelta(days=2), "2d"),
        (timedelta(hours=36), "1d12h"),
        (timedelta(minutes=90), "1h30m"),
        (timedelta(seconds=0.5), "0.5s"),
        (timedelta(seconds=61.25), "1m1.25s"),
        (timedelta(0), "0s"),
        (None, "-"),
    ],
)
def test_format(value: timedelta | None, text: str) -> None:
    assert format_window(value) == text


@pytest.mark.parametrize("text", ["2d", "1d12h", "90m", "7d", "1w"])
def test_format_round_trips(text: str) -> None:
    assert parse_window(format_window(parse_window(text))) == parse_window(text)
