"""Settings refuse what they cannot mean: every malformed, non-finite or out-of-range value is a
`SettingsError` naming its variable, and the CLI turns it into one line and exit code 2."""

from __future__ import annotations

from datetime import timedelta

import pytest

from service.settings import Settings, SettingsError
from tests.support.cli import child_env, run_telemetry

SECONDS = [
    "TELEMETRY_BATCH_WINDOW_SECONDS",
    "TELEMETRY_STALL_SECONDS",
    "TELEMETRY_ACK_TIMEOUT_SECONDS",
    "TELEMETRY_MAX_CLOCK_SKEW_SECONDS",
    "TELEMETRY_RETENTION_HEARTBEATS_SECONDS",
    "TELEMETRY_RETENTION_DISPATCHES_SECONDS",
    "TELEMETRY_RETENTION_DOWNLOADS_SECONDS",
    "TELEMETRY_PARTITION_LOOKAHEAD_SECONDS",
    "TELEMETRY_MAINTENANCE_INTERVAL_SECONDS",
]
# Zero would mean "stalled at once", "never wait", "keep nothing", "never run": refused.
POSITIVE_SECONDS = [
    "TELEMETRY_STALL_SECONDS",
    "TELEMETRY_ACK_TIMEOUT_SECONDS",
    "TELEMETRY_RETENTION_HEARTBEATS_SECONDS",
    "TELEMETRY_RETENTION_DISPATCHES_SECONDS",
    "TELEMETRY_RETENTION_DOWNLOADS_SECONDS",
    "TELEMETRY_PARTITION_LOOKAHEAD_SECONDS",
    "TELEMETRY_MAINTENANCE_INTERVAL_SECONDS",
]
SIZES = [
    "TELEMETRY_BATCH_MAX_ROWS",
    "TELEMETRY_QUEUE_MAX_ROWS",
    "TELEMETRY_RETRY_AFTER_SECONDS",
    "TELEMETRY_FLUSH_RETRY_ATTEMPTS",
    "TELEMETRY_POOL_SIZE",
    "TELEMETRY_HEARTBEAT_BUCKET_SECONDS",
    "TELEMETRY_MAX_BATCH_HEARTBEATS",
    "TELEMETRY_MAX_BODY_BYTES",
    "TELEMETRY_READ_BUFFER_BYTES",
]


def refusal(env: dict[str, str]) -> str:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(env)
    return str(caught.value)


@pytest.mark.parametrize("name", SECONDS)
@pytest.mark.parametrize("raw", ["nan", "NaN", "inf", "-inf", "1e400", "-1", "abc", "1e12"])
def test_a_duration_that_is_not_a_finite_sane_number_of_seconds_is_refused_naming_it(
    name: str, raw: str
) -> None:
    assert refusal({name: raw}).startswith(name)


@pytest.mark.parametrize("name", POSITIVE_SECONDS)
def test_zero_is_refused_where_it_means_nothing(name: str) -> None:
    assert refusal({name: "0"}).startswith(name)


def test_zero_is_kept_where_it_means_something() -> None:
    settings = Settings.from_env(
        {"TELEMETRY_BATCH_WINDOW_SECONDS": "0", "TELEMETRY_MAX_CLOCK_SKEW_SECONDS": "0"}
    )
    assert settings.batch_window == timedelta(0) and settings.max_clock_skew == timedelta(0)


@pytest.mark.parametrize("name", SIZES)
@pytest.mark.parametrize("raw", ["0", "-5", "nan", "inf", "1.5", str(2**63)])
def test_a_size_that_is_not_a_positive_sane_integer_is_refused_naming_it(name: str, raw: str) -> None:
    assert refusal({name: raw}).startswith(name)


@pytest.mark.parametrize("raw", ["0", "-1", "65536", "http", "nan"])
def test_a_port_outside_1_to_65535_is_refused(raw: str) -> None:
    assert refusal({"TELEMETRY_PORT": raw}).startswith("TELEMETRY_PORT")


def test_an_unknown_log_level_is_refused_and_a_known_one_kept_in_any_case() -> None:
    assert refusal({"TELEMETRY_LOG_LEVEL": "chatty"}).startswith("TELEMETRY_LOG_LEVEL")
    assert Settings.from_env({"TELEMETRY_LOG_LEVEL": "debug"}).log_level == "DEBUG"


def test_sane_values_are_read_as_given() -> None:
    settings = Settings.from_env(
        {
            "TELEMETRY_PORT": "9000",
            "TELEMETRY_STALL_SECONDS": "0.5",
            "TELEMETRY_RETENTION_HEARTBEATS_SECONDS": "3600",
            "TELEMETRY_POOL_SIZE": "4",
        }
    )
    assert (settings.port, settings.stall_after, settings.pool_size) == (9000, timedelta(seconds=0.5), 4)
    assert settings.retention.device_heartbeats == timedelta(hours=1)
    assert Settings.from_env({}) == Settings()


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("TELEMETRY_STALL_SECONDS", "nan"),
        ("TELEMETRY_ACK_TIMEOUT_SECONDS", "inf"),
        ("TELEMETRY_POOL_SIZE", "0"),
    ],
)
def test_the_cli_exits_2_with_one_line_naming_the_variable(name: str, raw: str) -> None:
    env = child_env()
    env[name] = raw
    done = run_telemetry(["migrate", "heads"], env, timeout=60)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and name in lines[0], done.stderr
    assert "Traceback" not in done.stderr


def test_an_unknown_event_loop_is_refused_and_a_known_one_kept() -> None:
    with pytest.raises(SettingsError, match="TELEMETRY_EVENT_LOOP"):
        Settings.from_env({"TELEMETRY_EVENT_LOOP": "trio"})
    assert Settings.from_env({"TELEMETRY_EVENT_LOOP": "asyncio"}).event_loop == "asyncio"
    assert Settings.from_env({}).event_loop == "auto"


def test_the_removed_device_events_window_is_refused_naming_its_replacement() -> None:
    import pytest

    from service.settings import Settings, SettingsError

    with pytest.raises(SettingsError, match="TELEMETRY_RETENTION_EVENTS_SECONDS"):
        Settings.from_env({"TELEMETRY_RETENTION_DEVICE_EVENTS_SECONDS": "86400"})
