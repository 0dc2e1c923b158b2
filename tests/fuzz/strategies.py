"""Hypothesis strategies for request bodies: valid heartbeats and arbitrary JSON."""

from __future__ import annotations

from datetime import timedelta, timezone
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from service.api.schemas import JSON_INT_MAX, JSON_INT_MIN


def fixed(max_examples: int) -> settings:
    """The same examples every run (derandomized, no example database) and no deadline: the
    examples go through a real service and database, whose timing is not the property."""
    return settings(
        max_examples=max_examples,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )


# PostgreSQL text cannot hold U+0000 (the service refuses it), and JSON text is UTF-8, which
# has no lone surrogates: st.characters() yields both unless told otherwise.
TEXT = st.characters(codec="utf-8", exclude_characters="\x00")


def text(min_size: int = 0, max_size: int = 64) -> st.SearchStrategy[str]:
    return st.text(TEXT, min_size=min_size, max_size=max_size)


# The service holds integers in free-form JSON to a bigint's range (schemas.JSON_INT_MIN/MAX).
INTEGERS = st.integers(JSON_INT_MIN, JSON_INT_MAX)
SCALARS = st.none() | st.booleans() | INTEGERS | st.floats(allow_nan=False, allow_infinity=False) | text()

JSON: st.SearchStrategy[Any] = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text(max_size=8), inner, max_size=4),
    max_leaves=12,
)

EXTRA = st.dictionaries(text(max_size=16), JSON, max_size=32)

OFFSETS = st.integers(min_value=-14 * 60, max_value=14 * 60).map(lambda m: timezone(timedelta(minutes=m)))


def heartbeats() -> st.SearchStrategy[dict[str, Any]]:
    """A valid heartbeat body without `ts` (which depends on the clock)."""
    return st.fixed_dictionaries(
        {"status": text(1, 64), "battery_pct": st.integers(0, 100)},
        optional={
            "app_version": st.none() | text(0, 64),
            "network": st.none() | text(0, 32),
            "extra": st.none() | EXTRA,
        },
    )
