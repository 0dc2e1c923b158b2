"""The watchdog tells a stalled database (calls wait, none finishes) from a busy one."""

from __future__ import annotations

import time

import pytest

from service.db.watchdog import DatabaseStalled, DatabaseWatchdog


def test_idle_is_not_stalled() -> None:
    watchdog = DatabaseWatchdog(stall_after=0.01)
    time.sleep(0.02)
    assert watchdog.stalled_for() == 0.0
    watchdog.ensure_responsive()


def test_a_call_waiting_with_none_finishing_is_a_stall() -> None:
    watchdog = DatabaseWatchdog(stall_after=0.05)
    with watchdog.track():
        assert not watchdog.stalled
        time.sleep(0.08)
        assert watchdog.stalled and watchdog.stalled_for() >= 0.08
        with pytest.raises(DatabaseStalled, match="waiting for"):
            watchdog.ensure_responsive()
    assert watchdog.stalled_for() == 0.0


def test_calls_that_keep_finishing_are_not_a_stall_however_long_one_waits() -> None:
    watchdog = DatabaseWatchdog(stall_after=0.05)
    with watchdog.track():  # e.g. a flush waiting on another instance's lock
        for _ in range(5):
            with watchdog.track():  # other calls still complete
                time.sleep(0.03)
            assert not watchdog.stalled
    assert watchdog.stalled_for() == 0.0


def test_a_new_call_behind_a_stalled_one_does_not_reset_the_clock() -> None:
    watchdog = DatabaseWatchdog(stall_after=0.05)
    with watchdog.track():
        time.sleep(0.04)
        with watchdog.track():
            time.sleep(0.04)
            assert watchdog.stalled_for() >= 0.08
