"""Retention windows as operators write them (`2d`, `36h`, `90m`, `1d12h`, plain seconds) and
as `show` prints them."""

from __future__ import annotations

import re
from datetime import timedelta

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_PLAIN_SECONDS = re.compile(r"\d+(?:\.\d+)?")


class WindowError(ValueError):
    """A window the operator typed cannot be used; the message says what is accepted."""


def parse_window(text: str) -> timedelta:
    """`2d`, `36h`, `90m`, `45s`, `1w`, combinations such as `1d12h`, or plain seconds.

    Raises `WindowError` for anything else, and for zero: a table cannot keep its rows for no
    time at all (the database refuses a zero window too).
    """
    raw = text.strip().lower()
    if _PLAIN_SECONDS.fullmatch(raw):
        seconds = float(raw)
    else:
        parts = _PART.findall(raw)
        if not parts or "".join(n + u for n, u in parts) != raw:
            raise WindowError(
                f"invalid window {text!r}: use a number with a unit s, m, h, d or w "
                "(e.g. 2d, 36h, 90m, 1d12h) or a plain number of seconds"
            )
        seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    try:
        window = timedelta(seconds=seconds)
    except OverflowError:
        raise WindowError(f"invalid window {text!r}: too long") from None
    if window <= timedelta(0):
        raise WindowError(f"invalid window {text!r}: must be longer than zero")
    return window


def format_window(value: timedelta | None) -> str:
    """Compact and exact: `2d`, `1d12h`, `90m` → `1h30m`, `0.5s`; `-` for None."""
    if value is None:
        return "-"
    if value < timedelta(0):
        return "-" + format_window(-value)
    total = value.days * 86_400 + value.seconds
    out = []
    for unit, size in (("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)):
        count, total = divmod(total, size)
        if count:
            out.append(f"{count}{unit}")
    if value.microseconds:
        # Fold the fraction into the seconds part so the value stays exact.
        if out and out[-1].endswith("s"):
            whole = int(out.pop()[:-1])
        else:
            whole = 0
        out.append(f"{whole + value.microseconds / 1_000_000:g}s")
    return "".join(out) or "0s"
