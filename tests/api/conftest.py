"""An app on a migrated database, driven over real HTTP by aiohttp's test client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from service.admin import create_operator
from service.app import create_app, create_pool
from service.migrations.commands import Migrator
from service.serve import head_revisions
from service.settings import StorageMode
from tests.conftest import settings_for


@dataclass
class Api:
    client: TestClient
    db_url: str
    operator_token: str
    app: Any

    def op(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.operator_token}"}

    async def mint(self, **spec: object) -> dict[str, Any]:
        """A new enrollment token through the API: `{"token", "id", …}`."""
        r = await self.client.post("/v1/enrollment-tokens", json=spec, headers=self.op())
        assert r.status == 201, await r.text()
        return await r.json()

    async def enroll(self, device_id: str, *, bound: bool = False) -> str:
        """Enroll `device_id` through the API (with a token bound to it when `bound`: needed to
        re-enroll an existing id); returns its device token."""
        token = (await self.mint(**({"device_id": device_id} if bound else {})))["token"]
        r = await self.client.post("/v1/enroll", json={"enrollment_token": token, "device_id": device_id})
        assert r.status == 201, await r.text()
        return (await r.json())["device_token"]

    async def count(self, sql: str, *args: Any) -> int:
        conn = await asyncpg.connect(self.db_url)
        try:
            return int(await conn.fetchval(sql, *args))
        finally:
            await conn.close()


@pytest.fixture
def app_settings(db_url: str, mode: StorageMode) -> Any:
    return settings_for(db_url, mode)


@pytest.fixture
async def api(db_url: str, mode: StorageMode, app_settings: Any) -> AsyncIterator[Api]:
    settings = replace(app_settings, database_url=db_url)
    pool = await create_pool(db_url, settings)
    conn = await asyncpg.connect(db_url)
    try:
        token = await create_operator(conn, "alice")
    finally:
        await conn.close()
    heads = head_revisions(Migrator(settings=settings, database_url=db_url))
    app = create_app(settings, pool, storage_mode=mode, head_revisions=heads)
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield Api(client, db_url, token, app)
    finally:
        await client.close()
        await pool.close()
