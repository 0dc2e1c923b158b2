"""A bad TELEMETRY_FCM_CREDENTIALS_FILE stops the service before it starts, with one line naming
the variable; a good one yields the project and a token source; the FCM settings are checked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from service.push.credentials import load_service_account
from service.settings import Settings, SettingsError
from tests.support.service_account import CLIENT_EMAIL, PROJECT, write_service_account

VARIABLE = "TELEMETRY_FCM_CREDENTIALS_FILE"


def _broken_files(tmp_path: Path, service_key) -> dict[str, tuple[Path, str]]:
    """Each way a credentials file can be wrong, and what the refusal must say."""
    not_json = tmp_path / "not-json.json"
    not_json.write_text("{ this is not json")
    user_key = tmp_path / "user.json"
    user_key.write_text(json.dumps({"type": "authorized_user", "client_id": "x", "refresh_token": "y"}))
    no_project = write_service_account(
        tmp_path / "no-project.json", service_key, "http://t/token", project_id=""
    )
    bad_key = write_service_account(
        tmp_path / "bad-key.json",
        service_key,
        "http://t/token",
        private_key="-----BEGIN PRIVATE KEY-----\nMIIsecretbits\n-----END PRIVATE KEY-----\n",
    )
    unreadable = tmp_path / "missing.json"
    return {
        "missing": (unreadable, "cannot read"),
        "not_json": (not_json, "is not a JSON document"),
        "not_a_service_account": (user_key, "is not a service-account key"),
        "field_missing": (no_project, "lacks project_id"),
        "bad_private_key": (bad_key, "is not a PEM RSA key"),
    }


@pytest.mark.parametrize(
    "case", ["missing", "not_json", "not_a_service_account", "field_missing", "bad_private_key"]
)
def test_an_unusable_credentials_file_is_refused_naming_the_variable(tmp_path, service_key, case):
    path, reason = _broken_files(tmp_path, service_key)[case]
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({VARIABLE: str(path)})
    assert str(refused.value).startswith(f"{VARIABLE}: ") and reason in str(refused.value)
    assert "secretbits" not in str(refused.value)


def test_serve_refuses_to_start_with_one_line_and_exit_2(tmp_path, service_key):
    path, _ = _broken_files(tmp_path, service_key)["bad_private_key"]
    env = {**os.environ, VARIABLE: str(path), "DATABASE_URL": "postgresql://u:p@127.0.0.1:9/none"}
    done = subprocess.run(
        [sys.executable, "-m", "service", "serve"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and VARIABLE in lines[0], done.stderr
    assert "secretbits" not in done.stderr


def test_a_valid_file_gives_its_project_and_email_and_keeps_the_key_out_of_repr(tmp_path, service_key):
    path = write_service_account(tmp_path / "sa.json", service_key, "http://127.0.0.1:1/token")
    settings = Settings.from_env({VARIABLE: str(path)})
    assert settings.fcm_credentials_file == path
    account = load_service_account(path, token_uri="http://127.0.0.1:2/token")
    assert (account.project_id, account.client_email, account.token_uri) == (
        PROJECT,
        CLIENT_EMAIL,
        "http://127.0.0.1:2/token",
    )
    assert "PRIVATE" not in repr(account) and "PRIVATE" not in repr(settings)


def test_without_a_file_push_is_not_configured_and_defaults_hold():
    settings = Settings.from_env({})
    assert settings.fcm_credentials_file is None
    assert settings.fcm_endpoint == "https://fcm.googleapis.com"
    assert settings.fcm_urgent_actions == ("lock", "wipe")


def test_fcm_settings_are_checked():
    settings = Settings.from_env(
        {
            "TELEMETRY_FCM_ENDPOINT": "http://127.0.0.1:8099/",
            "TELEMETRY_FCM_URGENT_ACTIONS": "lock, wipe ,ring",
            "TELEMETRY_FCM_TIMEOUT_SECONDS": "2.5",
            "TELEMETRY_FCM_MAX_CONNECTIONS": "32",
        }
    )
    assert settings.fcm_endpoint == "http://127.0.0.1:8099"
    assert settings.fcm_urgent_actions == ("lock", "wipe", "ring")
    assert settings.fcm_timeout.total_seconds() == 2.5 and settings.fcm_max_connections == 32
    assert Settings.from_env({"TELEMETRY_FCM_URGENT_ACTIONS": ""}).fcm_urgent_actions == ()
    for name, value in [
        ("TELEMETRY_FCM_ENDPOINT", "ftp://x"),
        ("TELEMETRY_FCM_ENDPOINT", "https://user:pw@fcm.example"),
        ("TELEMETRY_FCM_TOKEN_URI", "not a url"),
        ("TELEMETRY_FCM_URGENT_ACTIONS", "lock;wipe"),
        ("TELEMETRY_FCM_TIMEOUT_SECONDS", "0"),
        ("TELEMETRY_FCM_MAX_CONNECTIONS", "0"),
    ]:
        with pytest.raises(SettingsError, match=name):
            Settings.from_env({name: value})
