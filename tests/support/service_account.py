"""A service account made for the test run: its RSA key generated here (never committed) and
its JSON key file as the Firebase console downloads it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

PROJECT = "fleet-test-1a2b3"
CLIENT_EMAIL = "push-sender@fleet-test-1a2b3.iam.gserviceaccount.com"


@dataclass(frozen=True)
class TestKey:
    private_pem: str
    public_pem: str


def new_key() -> TestKey:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return TestKey(private, public)


def write_service_account(path: Path, key: TestKey, token_uri: str, **overrides: object) -> Path:
    """A service-account JSON key file as the Firebase console downloads it."""
    info: dict[str, object] = {
        "type": "service_account",
        "project_id": PROJECT,
        "private_key_id": "0123456789abcdef0123456789abcdef01234567",
        "private_key": key.private_pem,
        "client_email": CLIENT_EMAIL,
        "client_id": "100000000000000000001",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
        "universe_domain": "googleapis.com",
    }
    info.update(overrides)
    path.write_text(json.dumps(info))
    return path
