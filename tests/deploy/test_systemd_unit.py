"""deploy/systemd/telemetry.service: `systemd-analyze verify` accepts it (no warning either), and
it keeps what the README promises: TELEMETRY_* from an environment file, an unprivileged user,
restart on failure, migrations checked before the service starts, and a stop timeout longer
than a SIGTERM drain can take. The example environment file sets only real settings."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "deploy/systemd/telemetry.service"
ENV_EXAMPLE = ROOT / "deploy/systemd/telemetry.env.example"
INSTALL_DIR = "/opt/telemetry"  # where the unit expects the repository (README)


def unit() -> dict[str, dict[str, list[str]]]:
    """Section → key → its values in order (a key such as ExecStartPre may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
        else:
            key, value = line.split("=", 1)
            current.setdefault(key, []).append(value)
    return sections


def service() -> dict[str, str]:
    """The [Service] section's keys that appear once, with their value."""
    return {key: values[0] for key, values in unit()["Service"].items() if len(values) == 1}


def seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+)(s|min)?", value)
    assert match, value
    return int(match.group(1)) * (60 if match.group(2) == "min" else 1)


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze not installed (Debian package 'systemd'; scripts/bootstrap.sh installs it"
    " as root)",
)
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    # verify checks that every Exec*= program exists: point the unit at this checkout, whose
    # .venv/bin/telemetry is what /opt/telemetry/.venv/bin/telemetry is once installed.
    assert (ROOT / ".venv/bin/telemetry").exists()
    installed = tmp_path / "telemetry.service"
    installed.write_text(UNIT.read_text().replace(INSTALL_DIR, str(ROOT)))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(installed)], capture_output=True, text=True, timeout=60
    )
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 0 and not output, output


def test_the_unit_runs_unprivileged_from_an_environment_file_and_restarts_on_failure() -> None:
    unit_ = service()
    assert unit_["User"] not in ("", "root") and unit_["Group"] not in ("", "root")
    assert unit_["EnvironmentFile"] == "/etc/telemetry/telemetry.env"
    assert unit_["Restart"] == "on-failure"
    assert unit_["NoNewPrivileges"] == "yes"


def test_migrations_run_and_are_checked_before_serving_without_migrating_again() -> None:
    telemetry = f"{INSTALL_DIR}/.venv/bin/telemetry"
    assert unit()["Service"]["ExecStartPre"] == [
        f"{telemetry} migrate upgrade",
        f"{telemetry} migrate check",
    ]
    assert service()["ExecStart"] == f"{telemetry} serve --no-migrate"


def test_sigterm_reaches_the_main_process_and_the_stop_timeout_outlasts_a_drain() -> None:
    unit_ = service()
    assert unit_["KillSignal"] == "SIGTERM"
    # The main process passes SIGTERM to its workers; the rest is killed only at the timeout.
    assert unit_["KillMode"] == "mixed"
    # A queued write is answered within the ack timeout: the drain is bounded by it.
    assert seconds(unit_["TimeoutStopSec"]) >= 2 * Settings().ack_timeout.total_seconds()
    # Start-up may wait for the database twice (migrate upgrade, then serve).
    assert seconds(unit_["TimeoutStartSec"]) >= 2 * Settings().db_wait.total_seconds()


def test_the_example_environment_file_sets_only_real_settings() -> None:
    names = [
        line.lstrip("# ").split("=", 1)[0]
        for line in ENV_EXAMPLE.read_text().splitlines()
        if re.match(r"#? ?[A-Z_]+=", line)
    ]
    assert "DATABASE_URL" in names and len(names) >= 5
    settings_source = (ROOT / "service/settings.py").read_text()
    for name in names:
        assert f'"{name}"' in settings_source, f"{name} is not read by service/settings.py"
    example = {
        line.split("=", 1)[0]: line.split("=", 1)[1]
        for line in ENV_EXAMPLE.read_text().splitlines()
        if re.match(r"[A-Z_]+=", line)
    }
    parsed = Settings.from_env(example)
    assert parsed.port == int(example["TELEMETRY_PORT"])
