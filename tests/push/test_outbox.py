"""A dispatch queues its command's push in its own statement, and the push worker sends it
through FCM (the fake, speaking the protocol): once per new command, never for a repeated
request id, retried until the command's TTL, UNREGISTERED invalidating the token; the command
reads and the device's reachability show what came of it."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from aiohttp.test_utils import TestServer as HttpTestServer

from service.admin import create_operator
from service.app import create_app, create_pool
from service.commands import dispatches, pushes
from service.db.retained import BY_NAME, RetentionKind
from service.metrics import Metrics
from service.migrations.migrator import Migrator
from service.push.outbox import READ_STATUSES, PushStatus
from service.serve import head_revisions
from service.settings import Settings, StorageMode
from tests.push.fake_fcm import Answer, FakeFcmServer
from tests.push.test_push_tokens import fcm_token
from tests.support.app import Api


def fcm_settings(settings: Settings, credentials_file: Path, fake: FakeFcmServer, **changes: Any) -> Settings:
    return dataclasses.replace(
        settings,
        fcm_credentials_file=credentials_file,
        fcm_endpoint=fake.url,
        fcm_token_uri=fake.fcm.token_uri,
        **changes,
    )


@dataclasses.dataclass
class Instance:
    """One service instance (its own pool, app and push worker) over HTTP."""

    api: Api
    metrics: Metrics


async def _instance(
    settings: Settings, db_url: str, mode: StorageMode, token: str
) -> AsyncIterator[Instance]:
    pool = await create_pool(db_url, settings)
    metrics = Metrics()
    heads = head_revisions(Migrator(settings=settings, database_url=db_url))
    app = create_app(settings, pool, storage_mode=mode, head_revisions=heads, metrics=metrics)
    client = TestClient(HttpTestServer(app))
    await client.start_server()
    try:
        yield Instance(Api(client, db_url, token, app), metrics)
    finally:
        await client.close()
        await pool.close()


@pytest.fixture
def launch(
    db_url: str, mode: StorageMode, app_settings: Settings, credentials_file: Path, fake_fcm: FakeFcmServer
) -> Callable[..., Any]:
    """`async with launch(**settings) as instance`: an instance with FCM configured (the fake)."""
    import contextlib

    tokens: dict[str, str] = {}

    @contextlib.asynccontextmanager
    async def start(**changes: Any) -> AsyncIterator[Instance]:
        if "operator" not in tokens:
            conn = await asyncpg.connect(db_url)
            try:
                tokens["operator"] = await create_operator(conn, "alice")
            finally:
                await conn.close()
        settings = fcm_settings(
            dataclasses.replace(app_settings, database_url=db_url), credentials_file, fake_fcm, **changes
        )
        async for instance in _instance(settings, db_url, mode, tokens["operator"]):
            yield instance

    return start


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(db_url)
    yield conn
    await conn.close()


async def with_token(api: Api, device_id: str) -> tuple[str, str]:
    """Enroll `device_id` and report a registration token for it: (credential, token)."""
    credential = await api.enroll(device_id)
    token = fcm_token()
    r = await api.client.put(
        "/v1/device/push-token", json={"token": token}, headers={"Authorization": f"Bearer {credential}"}
    )
    assert r.status == 200, await r.text()
    return credential, token


async def dispatch(api: Api, request_id: str, device_id: str, action: str = "lock", **extra: Any) -> int:
    r = await api.client.post(
        "/v1/dispatches",
        json={"request_id": request_id, "device_id": device_id, "action": action, **extra},
        headers=api.op(),
    )
    assert r.status in (200, 201), await r.text()
    return r.status


async def command(api: Api, request_id: str) -> dict[str, Any]:
    r = await api.client.get(f"/v1/commands/{request_id}", headers=api.op())
    assert r.status == 200, await r.text()
    return await r.json()


async def until(check: Callable[[], Awaitable[bool]], within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {within} s")
        await asyncio.sleep(0.05)


async def push_status(api: Api, request_id: str) -> str:
    return (await command(api, request_id))["push"]["status"]


async def settled(api: Api, request_id: str, within: float = 20.0) -> dict[str, Any]:
    """The command once its push is no longer queued."""

    async def done() -> bool:
        return await push_status(api, request_id) != PushStatus.QUEUED

    await until(done, within)
    return await command(api, request_id)


# --- the statuses the sibling packages spell as text ----------------------------------------


def test_the_merge_the_reads_and_the_table_spell_the_outbox_statuses_alike() -> None:
    assert pushes.STATUSES == READ_STATUSES
    assert pushes.PushState.__annotations__  # typed
    for status in ("queued", "no_token"):
        assert f"'{status}'" in dispatches.MERGE_DISPATCHES_WITH_PUSHES
        assert status in PushStatus.values()
    assert "command_pushes" not in dispatches.MERGE_DISPATCHES
    assert BY_NAME["command_pushes"].kind is RetentionKind.ROW_EXPIRY


async def test_the_outbox_check_constraint_is_the_status_enum(db: asyncpg.Connection) -> None:
    async with db.transaction():
        live = await db.fetchval(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint"
            " WHERE conrelid = 'command_pushes'::regclass AND contype = 'c' AND conname LIKE '%status_known'"
        )
        # The enum's text, through the same server's normalisation, on a column of the same type.
        await db.execute(
            "CREATE TEMP TABLE enum_check (status varchar(16)"
            f" CONSTRAINT enum_status_known CHECK ({PushStatus.check_constraint()})) ON COMMIT DROP"
        )
        derived = await db.fetchval(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'enum_status_known'"
        )
    assert derived == live


# --- one push per new dispatch ---------------------------------------------------------------


async def test_a_new_dispatch_sends_one_push_and_a_repeated_request_id_none(
    launch: Callable[..., Any], fake_fcm: FakeFcmServer, db: asyncpg.Connection
) -> None:
    async with launch() as instance:
        api = instance.api
        _, token = await with_token(api, "phone-1")
        assert await dispatch(api, "lock-1", "phone-1", payload={"pin": "secret-1234"}) == 201
        sent = await settled(api, "lock-1")
        assert await dispatch(api, "lock-1", "phone-1", payload={"pin": "secret-1234"}) == 200
        await asyncio.sleep(0.6)  # past the worker's poll: a second push would be sent by now
        assert len(fake_fcm.fcm.received) == 1
        (received,) = fake_fcm.fcm.received
        # The data message: request id and action, never the payload; lock is urgent.
        assert received.registration_token == token
        assert received.message["data"] == {"request_id": "lock-1", "action": "lock"}
        assert received.message["android"]["priority"] == "HIGH"
        assert "secret-1234" not in str(received.message)
        ttl = int(received.message["android"]["ttl"].rstrip("s"))
        assert 86_390 <= ttl <= 86_400  # what is left of the command's day
        push = sent["push"]
        assert push["status"] == "sent" and push["attempts"] == 1 and push["last_error"] is None
        assert push["message_name"].startswith("projects/fleet-test-1a2b3/messages/")
        assert push["pushed_at"] >= sent["created_at"]
        assert await db.fetchval("SELECT count(*) FROM command_pushes") == 1
        assert instance.metrics.fcm_sends.labels("sent")._value.get() == 1
        assert instance.metrics.fcm_send_seconds._sum.get() > 0
        # Every operator read of commands carries the push.
        r = await api.client.get("/v1/devices/phone-1/commands", headers=api.op())
        (listed,) = (await r.json())["commands"]
        assert listed["push"] == push
        # The device's own pull does not.
        device = await api.enroll("phone-2")
        await dispatch(api, "ping-2", "phone-2", action="ping")
        r = await api.client.get("/v1/device/commands", headers={"Authorization": f"Bearer {device}"})
        (pulled,) = (await r.json())["commands"]
        assert "push" not in pulled


async def test_a_device_without_a_valid_token_gets_no_token_and_nothing_is_sent(
    launch: Callable[..., Any], fake_fcm: FakeFcmServer
) -> None:
    async with launch() as instance:
        api = instance.api
        await api.enroll("phone-1")
        await dispatch(api, "wipe-1", "phone-1", action="wipe")
        push = (await command(api, "wipe-1"))["push"]
        assert push == {
            "status": "no_token",
            "attempts": 0,
            "message_name": None,
            "last_error": None,
            "pushed_at": None,
        }
        r = await api.client.get("/v1/devices/phone-1", headers=api.op())
        assert (await r.json())["push"]["status"] == "no_token"
        await asyncio.sleep(0.5)
        assert fake_fcm.fcm.received == []


async def test_without_fcm_nothing_is_queued_and_reads_say_not_configured(api: Api) -> None:
    await api.enroll("phone-1")
    await dispatch(api, "lock-1", "phone-1")
    assert (await command(api, "lock-1"))["push"]["status"] == "not_configured"
    r = await api.client.get("/v1/devices/phone-1", headers=api.op())
    reach = (await r.json())["push"]
    assert reach["status"] == "not_configured" and reach["pushed_samples"] == 0
    assert await api.count("SELECT count(*) FROM command_pushes") == 0


# --- reachability ---------------------------------------------------------------------------


async def test_reachability_measures_dispatch_to_pushed_and_pushed_to_delivered(
    launch: Callable[..., Any],
) -> None:
    async with launch() as instance:
        api = instance.api
        credential, _ = await with_token(api, "phone-1")
        for i in range(3):
            await dispatch(api, f"ping-{i}", "phone-1", action="ping")
            await settled(api, f"ping-{i}")
            r = await api.client.post(
                f"/v1/dispatches/ping-{i}/ack",
                json={"status": "delivered"},
                headers={"Authorization": f"Bearer {credential}"},
            )
            assert r.status == 200, await r.text()
        r = await api.client.get("/v1/devices/phone-1", headers=api.op())
        reach = (await r.json())["push"]
        assert reach["status"] == "registered" and reach["pushed_samples"] == 3
        assert 0 <= reach["pushed_p50_seconds"] <= reach["pushed_p95_seconds"] < 10
        assert 0 <= reach["push_to_delivered_p50_seconds"] <= reach["push_to_delivered_p95_seconds"] < 10
        for i in range(3):
            c = await command(api, f"ping-{i}")
            pushed = c["push"]["pushed_at"]
            assert c["created_at"] <= pushed <= c["delivered_at"]


# --- FCM's answers --------------------------------------------------------------------------


async def test_unregistered_fails_the_push_and_invalidates_the_token_in_one_transaction(
    launch: Callable[..., Any], fake_fcm: FakeFcmServer, db: asyncpg.Connection
) -> None:
    async with launch() as instance:
        api = instance.api
        _, token = await with_token(api, "phone-1")
        fake_fcm.fcm.script(token, Answer.unregistered())
        await dispatch(api, "lock-1", "phone-1")
        push = (await settled(api, "lock-1"))["push"]
        assert push["status"] == "failed" and push["last_error"] == "UNREGISTERED" and push["attempts"] == 1
        row = await db.fetchrow("SELECT invalid_at, invalid_reason FROM device_push_tokens")
        assert row["invalid_at"] is not None and row["invalid_reason"] == "UNREGISTERED"
        assert fake_fcm.fcm.attempts[token] == 1  # final: never retried
        # The next command finds no valid token.
        await dispatch(api, "lock-2", "phone-1")
        assert (await command(api, "lock-2"))["push"]["status"] == "no_token"
        assert instance.metrics.fcm_sends.labels("failed")._value.get() == 1


@pytest.mark.parametrize("answer", [Answer.invalid_argument(), Answer.sender_id_mismatch()], ids=str)
async def test_a_final_answer_fails_the_push_at_once_and_keeps_the_token(
    launch: Callable[..., Any], fake_fcm: FakeFcmServer, db: asyncpg.Connection, answer: Answer
) -> None:
    async with launch() as instance:
        api = instance.api
        _, token = await with_token(api, "phone-1")
        fake_fcm.fcm.script(token, answer)
        await dispatch(api, "lock-1", "phone-1")
        push = (await settled(api, "lock-1"))["push"]
        assert push["status"] == "failed" and push["last_error"] == answer.code and push["attempts"] == 1
        assert fake_fcm.fcm.attempts[token] == 1
        assert await db.fetchval("SELECT invalid_at FROM device_push_tokens") is None


async def test_a_429_then_503_is_retried_honouring_retry_after_until_sent(
    launch: Callable[..., Any], fake_fcm: FakeFcmServer
) -> None:
    async with launch() as instance:
        api = instance.api
        _, token = await with_token(api, "phone-1")
        fake_fcm.fcm.script(token, Answer.quota_exceeded("2"), Answer.unavailable(), Answer.ok())
        await dispatch(api, "lock-1", "phone-1")
        push = (await settled(api, "lock-1", within=30))["push"]
        assert push["status"] == "sent" and push["attempts"] == 3
        assert push["last_error"] == "UNAVAILABLE"  # kept from the attempt before
        at = [r.at for r in fake_fcm.fcm.received]
        assert at[1] - at[0] >= 2.0  # never sooner than Retry-After
        assert at[2] - at[1] >= 0.5  # the first backoff: 1 s at 50-100 %
        assert instance.metrics.fcm_sends.labels("retried")._value.get() == 2


async def test_retries_stop_at_the_commands_ttl(
    launch: Callable[..., Any], fake_fcm: FakeFcmServer, db: asyncpg.Connection
) -> None:
    async with launch(command_ttl=timedelta(seconds=4)) as instance:
        api = instance.api
        _, token = await with_token(api, "phone-1")
        fake_fcm.fcm.script(token, Answer.unavailable("1"))  # for ever
        await dispatch(api, "lock-1", "phone-1")
        push = (await settled(api, "lock-1", within=20))["push"]
        assert push["status"] == "failed"
        assert push["last_error"] == "UNAVAILABLE; retries stopped at the command's TTL"
        expires_at = await db.fetchval("SELECT expires_at FROM command_pushes")
        created_at = await db.fetchval("SELECT created_at FROM command_pushes")
        assert expires_at - created_at == timedelta(seconds=4)
        attempts = fake_fcm.fcm.attempts[token]
        assert 2 <= attempts <= 4 and push["attempts"] == attempts
        # Every attempt was made before the TTL, and none after it.
        first = fake_fcm.fcm.received[0].at
        assert all(r.at - first < 4.0 for r in fake_fcm.fcm.received)
        await asyncio.sleep(1.5)
        assert fake_fcm.fcm.attempts[token] == attempts


# --- several instances ----------------------------------------------------------------------


async def test_two_instances_send_each_push_once(
    launch: Callable[..., Any], fake_fcm: FakeFcmServer, db: asyncpg.Connection
) -> None:
    fake_fcm.fcm.delay = 0.02  # answers take a while, so both instances have sends in flight
    count = 120
    async with launch() as one, launch() as two:
        tokens = {}
        for i in range(count // 4):
            _, tokens[f"phone-{i}"] = await with_token(one.api, f"phone-{i}")
        posts = [
            dispatch((one if i % 2 else two).api, f"ping-{i}", f"phone-{i % (count // 4)}", action="ping")
            for i in range(count)
        ]
        await asyncio.gather(*posts)

        async def all_sent() -> bool:
            return await db.fetchval("SELECT count(*) FROM command_pushes WHERE status = 'sent'") == count

        await until(all_sent, within=60)
        await asyncio.sleep(0.5)  # a duplicate would be sent by now
        received = [r.message["data"]["request_id"] for r in fake_fcm.fcm.received]
        assert sorted(received) == sorted(f"ping-{i}" for i in range(count))
        by_instance = [int(i.metrics.fcm_sends.labels("sent")._value.get()) for i in (one, two)]
        assert sum(by_instance) == count
        assert await db.fetchval("SELECT max(attempts) FROM command_pushes") == 1


# --- the worker's life ----------------------------------------------------------------------


async def test_stopping_releases_the_pushes_in_flight_for_the_next_instance(
    launch: Callable[..., Any], fake_fcm: FakeFcmServer, db: asyncpg.Connection
) -> None:
    fake_fcm.fcm.delay = 7.0  # longer than the stop's grace (5 s): the send is cancelled
    async with launch() as instance:
        api = instance.api
        await with_token(api, "phone-1")
        await dispatch(api, "lock-1", "phone-1")

        async def in_flight() -> bool:
            return fake_fcm.fcm.sends == 1

        await until(in_flight)
        lease = await db.fetchval("SELECT next_attempt_at FROM command_pushes")
        assert lease > await db.fetchval("SELECT now() + interval '10 seconds'")
    # Stopped: the claim is given back (due now), not left to its lease.
    row = await db.fetchrow("SELECT status, attempts, next_attempt_at <= now() AS due FROM command_pushes")
    assert (row["status"], row["attempts"], row["due"]) == ("queued", 1, True)
    fake_fcm.fcm.delay = 0.0
    async with launch() as instance:
        push = (await settled(instance.api, "lock-1"))["push"]
        assert push["status"] == "sent" and push["attempts"] == 2


async def test_a_command_cancelled_before_its_push_is_never_pushed(
    launch: Callable[..., Any], fake_fcm: FakeFcmServer
) -> None:
    async with launch(push_worker=False) as instance:  # queued, not sent yet
        api = instance.api
        await with_token(api, "phone-1")
        await dispatch(api, "lock-1", "phone-1")
        r = await api.client.post("/v1/commands/lock-1/cancel", headers=api.op())
        assert r.status == 200, await r.text()
    async with launch() as instance:
        push = (await settled(instance.api, "lock-1"))["push"]
        assert (push["status"], push["last_error"]) == ("failed", "command cancelled before its push")
    assert fake_fcm.fcm.received == []


async def test_the_worker_goes_on_after_failed_rounds(
    launch: Callable[..., Any], fake_fcm: FakeFcmServer, db: asyncpg.Connection
) -> None:
    async with launch() as instance:
        api = instance.api
        await with_token(api, "phone-1")
        await dispatch(api, "lock-1", "phone-1")
        await settled(api, "lock-1")
        # The outbox is away: every claim fails (the statement names a table that is gone).
        await db.execute("ALTER TABLE command_pushes RENAME TO command_pushes_away")
        await asyncio.sleep(2.5)  # a few failed rounds, each logged and paused
        await db.execute(
            "INSERT INTO command_pushes_away (id, device_id, request_id, action, expires_at)"
            " VALUES (-1, 'phone-1', 'late-1', 'ring', now() + interval '1 hour')"
        )
        await db.execute("ALTER TABLE command_pushes_away RENAME TO command_pushes")

        async def sent() -> bool:
            return await db.fetchval("SELECT status FROM command_pushes WHERE id = -1") == "sent"

        await until(sent)
        assert [r.message["data"]["request_id"] for r in fake_fcm.fcm.received] == ["lock-1", "late-1"]
