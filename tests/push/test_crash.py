"""The service as its own process, SIGKILLed after its dispatches committed and before their
pushes were answered, then started again: every push is sent after the restart (it was a
committed row, not an in-memory task), and each command ends with exactly one `sent` push."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import aiohttp
import asyncpg

from benchmarks.fleet import bearer, enroll
from benchmarks.processes import create_operator
from service.settings import StorageMode
from tests.faults.harness import service
from tests.push.fake_fcm import FakeFcmServer
from tests.push.test_push_tokens import fcm_token

COMMANDS = 20


async def test_a_service_killed_between_commit_and_send_sends_every_push_after_restart(
    db_url: str, mode: StorageMode, tmp_path: Path, fake_fcm: FakeFcmServer, credentials_file: Path
) -> None:
    env = {
        "TELEMETRY_FCM_CREDENTIALS_FILE": str(credentials_file),
        "TELEMETRY_FCM_ENDPOINT": fake_fcm.url,
        "TELEMETRY_FCM_TOKEN_URI": fake_fcm.fcm.token_uri,
        # A claim's lease is 3 x 2 s + 5 s: the restarted instance sends what the dead one had
        # claimed once it passed.
        "TELEMETRY_FCM_TIMEOUT_SECONDS": "2",
    }
    # FCM answers after 8 s, long after the kill: every claimed push is in flight when it dies.
    fake_fcm.fcm.delay = 8.0
    first = service(db_url, mode, tmp_path, "first", **env)
    second = service(db_url, mode, tmp_path, "second", **env)
    conn = await asyncpg.connect(db_url)
    try:
        operator = bearer(await asyncio.to_thread(create_operator, db_url, "alice"))
        await asyncio.to_thread(first.start)
        (device,) = await enroll(first.base_url, operator, ["phone-1"])
        async with aiohttp.ClientSession(first.base_url) as http:
            async with http.put(
                "/v1/device/push-token", json={"token": fcm_token()}, headers=device.headers
            ) as r:
                assert r.status == 200, await r.text()
            for i in range(COMMANDS):
                async with http.post(
                    "/v1/dispatches",
                    json={"request_id": f"lock-{i}", "device_id": "phone-1", "action": "lock"},
                    headers=operator,
                ) as r:
                    assert r.status == 201, await r.text()
        # Committed (each 201 came after its commit) and claimed (FCM has the requests).
        deadline = time.monotonic() + 30
        while fake_fcm.fcm.sends < COMMANDS:
            assert time.monotonic() < deadline, fake_fcm.fcm.sends
            await asyncio.sleep(0.05)
        assert first.proc is not None
        first.proc.send_signal(signal.SIGKILL)
        await asyncio.to_thread(first.proc.wait, 10)
        statuses = await conn.fetch("SELECT status, count(*) FROM command_pushes GROUP BY status")
        assert {r["status"]: r["count"] for r in statuses} == {"queued": COMMANDS}

        fake_fcm.fcm.delay = 0.0
        killed = len(fake_fcm.fcm.received)
        await asyncio.to_thread(second.start)
        deadline = time.monotonic() + 60
        while await conn.fetchval("SELECT count(*) FROM command_pushes WHERE status = 'sent'") < COMMANDS:
            assert time.monotonic() < deadline, await conn.fetch("SELECT * FROM command_pushes")
            await asyncio.sleep(0.2)
        after = [r.message["data"]["request_id"] for r in fake_fcm.fcm.received[killed:]]
        # Each push is sent again exactly once by the new instance, and recorded once.
        assert sorted(after) == sorted(f"lock-{i}" for i in range(COMMANDS))
        rows = await conn.fetch("SELECT status, attempts, message_name, pushed_at FROM command_pushes")
        assert all(r["attempts"] == 2 and r["message_name"] and r["pushed_at"] for r in rows), rows
    finally:
        await asyncio.to_thread(second.stop)
        await asyncio.to_thread(first.stop)
        await conn.close()
