"""`serve` runs on uvloop where it is installed (a dependency), on asyncio's loop when told to,
and refuses an explicit `uvloop` that is missing instead of quietly running without it."""

from __future__ import annotations

import asyncio
import builtins
from typing import Any

import pytest

from service import event_loop


async def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_auto_runs_on_uvloop_when_it_is_installed() -> None:
    pytest.importorskip("uvloop")
    assert event_loop.run(_loop_module(), "auto").startswith("uvloop")


def test_asyncio_runs_on_the_standard_library_loop() -> None:
    assert event_loop.run(_loop_module(), "asyncio").startswith("asyncio")


def test_auto_falls_back_to_asyncio_and_explicit_uvloop_fails_where_uvloop_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_import = builtins.__import__

    def no_uvloop(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "uvloop":
            raise ImportError("no uvloop here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_uvloop)
    assert event_loop.run(_loop_module(), "auto").startswith("asyncio")
    with pytest.raises(event_loop.EventLoopUnavailable, match="TELEMETRY_EVENT_LOOP=uvloop"):
        event_loop.loop_factory("uvloop")
