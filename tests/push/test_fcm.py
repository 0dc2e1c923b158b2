"""The FCM sender against the fake FCM: tokens, messages, answers, retries."""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from service.push.credentials import AccessTokens, load_service_account
from service.push.fcm import FcmSender, Outcome, RetryPolicy, classify, configured_sender, retry_after_seconds
from service.push.messages import CommandPush, command_push
from service.settings import Settings
from tests.push.fake_fcm import Answer, FakeFcmServer
from tests.support.service_account import PROJECT


def push(token: str = "tok-ok", action: str = "lock", ttl: timedelta = timedelta(days=1)) -> CommandPush:
    return command_push(token, f"req-{token}", action, ttl)


@pytest.fixture
async def sender(credentials_file: Path, fake_fcm: FakeFcmServer) -> AsyncIterator[FcmSender]:
    account = load_service_account(credentials_file)
    fcm = FcmSender(
        account.project_id,
        AccessTokens(account),
        endpoint=fake_fcm.url,
        timeout=2.0,
        policy=RetryPolicy(base=0.05, cap=0.4),
    )
    yield fcm
    await fcm.close()


async def test_a_sent_push_carries_request_id_and_action_but_never_the_payload(sender, fake_fcm):
    result = await sender.send(command_push("tok-ok", "lock-1", "lock", timedelta(hours=2)))
    assert result.outcome is Outcome.SENT
    assert result.message_name is not None and result.message_name.startswith(f"projects/{PROJECT}/messages/")
    (received,) = fake_fcm.fcm.received
    assert received.message == {
        "token": "tok-ok",
        "data": {"request_id": "lock-1", "action": "lock"},
        "android": {"priority": "HIGH", "ttl": "7200s"},
    }


async def test_priority_is_high_only_for_urgent_actions_and_the_ttl_is_the_commands(sender, fake_fcm):
    await sender.send(command_push("tok-a", "r-1", "sync", timedelta(seconds=90.2)))
    await sender.send(command_push("tok-b", "r-2", "wipe", timedelta(days=1), urgent_actions=("wipe",)))
    await sender.send(command_push("tok-c", "r-3", "lock", timedelta(days=1), urgent_actions=("wipe",)))
    android = {r.registration_token: r.message["android"] for r in fake_fcm.fcm.received}
    assert android == {
        "tok-a": {"priority": "NORMAL", "ttl": "91s"},
        "tok-b": {"priority": "HIGH", "ttl": "86400s"},
        "tok-c": {"priority": "NORMAL", "ttl": "86400s"},
    }


async def test_the_ttl_is_held_to_fcms_four_weeks():
    body = command_push("t", "r", "sync", timedelta(days=90)).body()
    assert body["message"]["android"]["ttl"] == f"{28 * 86400}s"


async def test_the_access_token_is_minted_once_and_cached_across_concurrent_sends(sender, fake_fcm):
    results = await asyncio.gather(*(sender.send(push(f"tok-{i}")) for i in range(50)))
    assert {r.outcome for r in results} == {Outcome.SENT}
    assert fake_fcm.fcm.token_grants == 1
    await sender.send(push("tok-later"))
    assert fake_fcm.fcm.token_grants == 1


async def test_a_token_near_its_expiry_is_refreshed_before_it_is_used(credentials_file, fake_fcm):
    # Tokens live 2 s; with a 1.5 s margin one is fresh for 0.5 s, then minted again.
    fake_fcm.fcm.token_lifetime = 2
    account = load_service_account(credentials_file)
    tokens = AccessTokens(account, refresh_margin=1.5)
    fcm = FcmSender(account.project_id, tokens, endpoint=fake_fcm.url)
    try:
        assert (await fcm.send(push("a"))).outcome is Outcome.SENT
        assert (await fcm.send(push("b"))).outcome is Outcome.SENT
        assert fake_fcm.fcm.token_grants == 1
        await asyncio.sleep(0.7)
        assert (await fcm.send(push("c"))).outcome is Outcome.SENT
        assert fake_fcm.fcm.token_grants == 2
        # Every send went out with a token the fake still honoured: no 401 on the way.
        assert [r.status for r in fake_fcm.fcm.received] == [200, 200, 200]
    finally:
        await fcm.close()


async def test_a_refused_access_token_is_replaced_and_the_send_retried_at_once(sender, fake_fcm):
    assert (await sender.send(push("first"))).outcome is Outcome.SENT
    fake_fcm.fcm.expire_tokens()  # FCM no longer honours it, though our cache thinks it fresh
    started = time.monotonic()
    result = await sender.deliver(push("second"), deadline=time.monotonic() + 5)
    assert result.outcome is Outcome.SENT and result.attempts == 2
    assert time.monotonic() - started < 1.0
    assert fake_fcm.fcm.token_grants == 2


@pytest.mark.parametrize(
    ("answer", "outcome", "error", "unregistered"),
    [
        (Answer.unregistered(), Outcome.FINAL, "UNREGISTERED", True),
        (Answer.invalid_argument(), Outcome.FINAL, "INVALID_ARGUMENT", False),
        (Answer.sender_id_mismatch(), Outcome.FINAL, "SENDER_ID_MISMATCH", False),
        (Answer.quota_exceeded("7"), Outcome.RETRY, "QUOTA_EXCEEDED", False),
        (Answer.unavailable(), Outcome.RETRY, "UNAVAILABLE", False),
        (Answer.internal(), Outcome.RETRY, "INTERNAL", False),
    ],
)
async def test_each_fcm_answer_is_classified_as_fcm_documents_it(
    sender, fake_fcm, answer, outcome, error, unregistered
):
    fake_fcm.fcm.script("tok-x", answer)
    result = await sender.send(push("tok-x"))
    assert (result.outcome, result.http_status, result.error) == (outcome, answer.status, error)
    assert result.unregistered is unregistered
    assert result.retry_after == (7.0 if answer.retry_after == "7" else None)


async def test_a_404_that_is_not_unregistered_does_not_condemn_the_token():
    result = classify(
        404, b'{"error": {"code": 404, "message": "Requested entity was not found.", "status": "NOT_FOUND"}}'
    )
    assert result.outcome is Outcome.FINAL and result.error == "NOT_FOUND" and not result.unregistered


async def test_unreadable_answers_are_classified_by_status_alone():
    assert classify(502, b"<html>bad gateway</html>").outcome is Outcome.RETRY
    assert classify(418, b"").outcome is Outcome.FINAL
    assert classify(200, b"not json").outcome is Outcome.SENT


async def test_a_slow_answer_past_the_attempt_timeout_is_a_retryable_timeout(sender, fake_fcm):
    fake_fcm.fcm.script("tok-slow", Answer.slow(5.0))
    started = time.monotonic()
    result = await sender.send(push("tok-slow"), budget=0.3)
    assert (result.outcome, result.error) == (Outcome.RETRY, "timeout")
    assert time.monotonic() - started < 1.5


async def test_retries_back_off_until_sent(sender, fake_fcm):
    fake_fcm.fcm.script("tok-flaky", Answer.unavailable(), Answer.internal(), Answer.ok())
    result = await sender.deliver(push("tok-flaky"), deadline=time.monotonic() + 10)
    assert (result.outcome, result.attempts) == (Outcome.SENT, 3)
    times = [r.at for r in fake_fcm.fcm.received]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # base 0.05 s doubling, 50-100 % jitter: the first gap in [0.025, 0.05], the second in [0.05, 0.1].
    assert 0.02 <= gaps[0] <= 0.2 and 0.045 <= gaps[1] <= 0.3


async def test_retry_after_is_held_even_when_the_backoff_is_shorter(sender, fake_fcm):
    fake_fcm.fcm.script("tok-429", Answer.quota_exceeded("1"), Answer.ok())
    result = await sender.deliver(push("tok-429"), deadline=time.monotonic() + 10)
    assert (result.outcome, result.attempts) == (Outcome.SENT, 2)
    first, second = (r.at for r in fake_fcm.fcm.received)
    assert second - first >= 1.0


async def test_retries_stop_at_the_deadline(sender, fake_fcm):
    fake_fcm.fcm.script("tok-down", Answer.unavailable())
    started = time.monotonic()
    result = await sender.deliver(push("tok-down"), deadline=started + 1.0)
    elapsed = time.monotonic() - started
    assert result.outcome is Outcome.RETRY and result.gave_up and result.error == "UNAVAILABLE"
    assert elapsed <= 1.05
    assert result.attempts == fake_fcm.fcm.attempts["tok-down"] >= 3
    # No attempt was started after the deadline.
    assert all(r.at <= started + 1.0 for r in fake_fcm.fcm.received)


async def test_a_retry_after_beyond_the_deadline_gives_up_at_once(sender, fake_fcm):
    fake_fcm.fcm.script("tok-later", Answer.quota_exceeded("30"))
    started = time.monotonic()
    result = await sender.deliver(push("tok-later"), deadline=started + 5)
    assert result.gave_up and result.attempts == 1 and time.monotonic() - started < 1.0


async def test_final_answers_are_not_retried(sender, fake_fcm):
    fake_fcm.fcm.script("tok-gone", Answer.unregistered())
    result = await sender.deliver(push("tok-gone"), deadline=time.monotonic() + 10)
    assert result.unregistered and result.attempts == 1 and fake_fcm.fcm.attempts["tok-gone"] == 1


async def test_an_unreachable_fcm_is_retryable_not_an_exception(credentials_file):
    account = load_service_account(credentials_file)
    fcm = FcmSender(account.project_id, AccessTokens(account), endpoint="http://127.0.0.1:9", timeout=1)
    try:
        result = await fcm.send(push())
        assert result.outcome is Outcome.RETRY and result.error in ("connection", "timeout")
    finally:
        await fcm.close()


async def test_an_unreachable_token_endpoint_is_retryable(tmp_path, service_key, fake_fcm):
    from tests.support.service_account import write_service_account

    path = write_service_account(tmp_path / "sa.json", service_key, "http://127.0.0.1:9/token")
    account = load_service_account(path)
    fcm = FcmSender(account.project_id, AccessTokens(account), endpoint=fake_fcm.url, timeout=1)
    try:
        result = await fcm.send(push())
        assert (result.outcome, result.error) == (Outcome.RETRY, "token")
        assert fake_fcm.fcm.sends == 0
    finally:
        await fcm.close()


def test_backoff_doubles_to_its_cap_with_jitter_and_retry_after_is_a_floor():
    policy = RetryPolicy(base=1.0, cap=8.0)
    rng = random.Random(7)
    for attempt, full in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (9, 8.0)]:
        delay = policy.delay(attempt, None, rng)
        assert full * 0.5 <= delay <= full
    assert policy.delay(1, 30.0, rng) == 30.0


def test_retry_after_reads_seconds_and_http_dates_held_to_an_hour():
    from datetime import UTC, datetime

    now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    assert retry_after_seconds("5") == 5.0
    assert retry_after_seconds("Thu, 01 Jan 2026 12:00:30 GMT", now) == 30.0
    assert retry_after_seconds("999999") == 3600.0
    assert retry_after_seconds("-3") == 0.0
    assert retry_after_seconds("soon") is None


async def test_the_settings_configure_the_sender_or_leave_push_off(credentials_file, fake_fcm):
    assert configured_sender(Settings.from_env({})) is None
    settings = Settings.from_env(
        {
            "TELEMETRY_FCM_CREDENTIALS_FILE": str(credentials_file),
            "TELEMETRY_FCM_ENDPOINT": fake_fcm.url,
            "TELEMETRY_FCM_TOKEN_URI": fake_fcm.fcm.token_uri,
        }
    )
    fcm = configured_sender(settings)
    assert fcm is not None and fcm.project_id == PROJECT
    try:
        assert fake_fcm.fcm.token_grants == 0  # nothing is asked before the first send
        result = await fcm.send(push())
        assert result.outcome is Outcome.SENT and fake_fcm.fcm.token_grants == 1
    finally:
        await fcm.close()
