"""The event loop `telemetry serve` runs on: uvloop where it is installed, else asyncio's own.

uvloop is a dependency of the package, but a platform without a wheel for it (or
`TELEMETRY_EVENT_LOOP=asyncio`) still serves on the standard library's loop; only an explicit
`TELEMETRY_EVENT_LOOP=uvloop` without uvloop installed is an error.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, Literal, TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)

Choice = Literal["auto", "uvloop", "asyncio"]


class EventLoopUnavailable(RuntimeError):
    """`uvloop` was asked for explicitly and is not installed."""


def loop_factory(choice: Choice) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The factory for `asyncio.Runner`: None means asyncio's default loop."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise EventLoopUnavailable(
                "TELEMETRY_EVENT_LOOP=uvloop but uvloop is not installed; install it or use asyncio"
            ) from None
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run(main: Coroutine[Any, Any, T], choice: Choice) -> T:
    """`asyncio.run(main)` on the chosen loop."""
    factory = loop_factory(choice)
    log.debug("event loop: %s", "uvloop" if factory is not None else "asyncio")
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
