"""The app on a migrated database over real HTTP, as the api, fuzz and security tests drive
it: an operator, enrolled devices, counts read back, and the first maintenance round."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from service.api.state import SERVICES


@dataclass
class HeartbeatsLock:
    """A connection of its own that can hold ACCESS EXCLUSIVE on device_heartbeats: the
    writer's INSERT (and any read of the table) then waits exactly as on a stalled server."""

    conn: asyncpg.Connection
    _tx: asyncpg.transaction.Transaction | None = None

    async def hold(self) -> None:
        self._tx = self.conn.transaction()
        await self._tx.start()
        await self.conn.execute("LOCK TABLE device_heartbeats IN ACCESS EXCLUSIVE MODE")

    async def release(self) -> None:
        if self._tx is not None:
            await self._tx.rollback()
            self._tx = None


async def first_maintenance_round(api: Api) -> None:
    """Until the app's first maintenance round has finished (at most 60 s). In timescale mode it
    runs a test database's jobs itself (the test cluster has no scheduler for most databases),
    so a test that compresses, fills the disk or reads the events hypertable waits for it."""
    maintenance = api.app[SERVICES].maintenance
    for _ in range(1200):
        if maintenance is None or maintenance.last_health is not None:
            return
        await asyncio.sleep(0.05)
    pytest.fail("the app's first maintenance round did not finish within 60 s")


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
