"""A service account made for the test run (its RSA key generated here, never committed) and a
fake FCM that knows its public key."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.push.fake_fcm import FakeFcm, FakeFcmServer
from tests.support.service_account import CLIENT_EMAIL, PROJECT, TestKey, new_key, write_service_account


@pytest.fixture(scope="session")
def service_key() -> TestKey:
    return new_key()


@pytest.fixture
async def fake_fcm(service_key: TestKey) -> AsyncIterator[FakeFcmServer]:
    server = await FakeFcmServer(FakeFcm(PROJECT, CLIENT_EMAIL, service_key.public_pem)).start()
    yield server
    await server.stop()


@pytest.fixture
def credentials_file(tmp_path: Path, service_key: TestKey, fake_fcm: FakeFcmServer) -> Path:
    return write_service_account(tmp_path / "service-account.json", service_key, fake_fcm.fcm.token_uri)
