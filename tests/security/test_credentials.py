"""Credentials beyond tests/api/test_auth.py: the failure throttle holds even against a valid
token and lifts after its window, and a device credential stays bound to its device across
revocation and re-enrollment."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from service.api import throttle
from service.api.credentials import TtlCache
from service.api.state import SERVICES
from service.api.throttle import FailureThrottle
from service.settings import StorageMode
from tests.support.app import Api


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


async def test_throttle_refuses_even_a_valid_token_without_spending_it_and_lifts_after_the_window(
    api: Api, mode: StorageMode, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    monkeypatch.setattr(throttle, "time", clock)  # the throttle's clock only
    good = await api.mint()
    # refused bodies (422) are not failed guesses: they do not count
    for _ in range(15):
        r = await api.client.post("/v1/enroll", json={"enrollment_token": "enr_x", "device_id": "bad id"})
        assert r.status == 422
    for _ in range(10):
        r = await api.client.post("/v1/enroll", json={"enrollment_token": "enr_guess", "device_id": "g"})
        assert r.status == 401
    r = await api.client.post("/v1/enroll", json={"enrollment_token": good["token"], "device_id": "real"})
    assert r.status == 429 and (await r.json())["error"]["code"] == "too_many_attempts"
    assert r.headers["Retry-After"] == "61"
    assert await api.count("SELECT use_count FROM enrollment_tokens WHERE id = $1", good["id"]) == 0
    clock.now += 30
    r = await api.client.post("/v1/enroll", json={"enrollment_token": good["token"], "device_id": "real"})
    assert r.status == 429 and r.headers["Retry-After"] == "31"
    clock.now += 31
    r = await api.client.post("/v1/enroll", json={"enrollment_token": good["token"], "device_id": "real"})
    assert r.status == 201
    assert await api.count("SELECT count(*) FROM devices WHERE id = 'real'") == 1


def _failed(t: FailureThrottle, client: str) -> None:
    attempt, _ = t.try_reserve(client)
    assert attempt is not None
    t.fail(attempt)


def test_throttle_memory_is_bounded_under_a_flood_of_clients() -> None:
    t = FailureThrottle(limit=2, window=60, max_clients=100)
    _failed(t, "victim")
    _failed(t, "victim")
    for i in range(1000):
        _failed(t, f"10.0.{i // 256}.{i % 256}")
        assert len(t) <= 100
        # a guesser who keeps guessing is recently seen, so the flood does not evict it
        assert t.try_reserve("victim")[0] is None
    assert t.retry_after("victim") is not None and t.retry_after("someone else") is None
    # the flood evicted the least recently seen clients one by one, never everyone at once
    assert len(t) == 100
    assert t.retry_after("10.0.0.0") is None  # evicted long ago: a fresh start
    _failed(t, "10.0.3.231")  # the latest one is remembered: its second failure hits the limit
    assert t.retry_after("10.0.3.231") is not None


def test_throttle_counts_failures_and_attempts_in_flight(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(throttle, "time", Clock())
    t = FailureThrottle(limit=3, window=60)
    attempts = [t.try_reserve("a")[0] for _ in range(3)]
    assert all(attempt is not None for attempt in attempts)
    # three in flight: a fourth could make four failures, so it must wait (not refused yet)
    assert t.try_reserve("a") == (None, None)
    t.release(attempts[0])  # that attempt was a success: it no longer counts
    fourth, _ = t.try_reserve("a")
    assert fourth is not None
    for attempt in (attempts[1], attempts[2], fourth):
        t.fail(attempt)  # type: ignore[arg-type]
    assert t.try_reserve("a") == (None, 61)  # three failures: refused, for the window
    assert t.try_reserve("b")[0] is not None  # other clients are not affected


async def test_a_parallel_burst_of_good_attempts_waits_its_turn_instead_of_being_refused() -> None:
    t = FailureThrottle(limit=3, window=60, max_wait=5)

    async def good(i: int) -> bool:
        attempt, _ = await t.reserve("nat")
        if attempt is None:
            return False
        await asyncio.sleep(0.01)
        t.release(attempt)
        return True

    assert all(await asyncio.gather(*(good(i) for i in range(20))))
    assert t.retry_after("nat") is None


async def test_a_device_credential_stays_bound_to_its_device(api: Api, mode: StorageMode) -> None:
    old_a = await api.enroll("bind-a")
    token_b = await api.enroll("bind-b")
    ok = {"status": "ok", "battery_pct": 1}
    # a download names no device: it is the caller's
    r = await api.client.post(
        "/v1/apk-downloads",
        json={"build_id": "b", "outcome": "started", "device_id": "bind-b"},
        headers=bearer(old_a),
    )
    assert r.status == 422 and (await r.json())["error"]["field"] == "device_id"
    r = await api.client.post(
        "/v1/apk-downloads", json={"build_id": "b", "outcome": "started"}, headers=bearer(old_a)
    )
    assert (await r.json())["device_id"] == "bind-a"
    assert await api.count("SELECT count(*) FROM apk_download_events WHERE device_id = 'bind-b'") == 0
    # revoke, reinstate and re-enroll a: the old credential stays dead, the new one is a's, b is
    # untouched
    assert (await api.client.post("/v1/devices/bind-a/revoke", headers=api.op())).status == 200
    assert (await api.client.post("/v1/devices/bind-a/reinstate", headers=api.op())).status == 200
    new_a = await api.enroll("bind-a", bound=True)
    assert new_a != old_a
    assert (await api.client.post("/v1/heartbeats", json=ok, headers=bearer(old_a))).status == 401
    r = await api.client.post("/v1/heartbeats", json=ok, headers=bearer(new_a))
    assert r.status == 200 and (await r.json())["device_id"] == "bind-a"
    r = await api.client.post("/v1/heartbeats", json=ok, headers=bearer(token_b))
    assert r.status == 200 and (await r.json())["device_id"] == "bind-b"
    # a revocation made through another instance takes effect once the cache entry expires
    api.app[SERVICES].auth.cache.clear()
    conn = await asyncpg.connect(api.db_url)
    try:
        await conn.execute("UPDATE devices SET credential_revoked_at = now() WHERE id = 'bind-b'")
    finally:
        await conn.close()
    assert (await api.client.post("/v1/heartbeats", json=ok, headers=bearer(token_b))).status == 401


async def test_a_download_event_takes_its_token_id_from_the_device_enrollment(api: Api) -> None:
    mine = await api.mint()
    other = await api.mint()
    r = await api.client.post("/v1/enroll", json={"enrollment_token": mine["token"], "device_id": "dl-a"})
    token = (await r.json())["device_token"]
    # a body's enrollment_token_id is accepted (older clients send it) and ignored
    for claimed in ({"enrollment_token_id": other["id"]}, {}):
        r = await api.client.post(
            "/v1/apk-downloads",
            json={"build_id": "b", "outcome": "completed", **claimed},
            headers=bearer(token),
        )
        assert r.status == 201
    assert await api.count("SELECT count(*) FROM apk_download_events WHERE device_id = 'dl-a'") == 2
    assert (
        await api.count(
            "SELECT count(*) FROM apk_download_events WHERE device_id = 'dl-a' AND token_id = $1", mine["id"]
        )
        == 2
    )
    # after a re-enrollment the new events carry the new token
    new = await api.mint(device_id="dl-a")
    r = await api.client.post("/v1/enroll", json={"enrollment_token": new["token"], "device_id": "dl-a"})
    token = (await r.json())["device_token"]
    r = await api.client.post(
        "/v1/apk-downloads", json={"build_id": "b", "outcome": "started"}, headers=bearer(token)
    )
    assert r.status == 201
    assert await api.count("SELECT count(*) FROM apk_download_events WHERE token_id = $1", new["id"]) == 1


def test_the_credential_cache_is_bounded_and_forgets_the_oldest_entry_first() -> None:
    cache: TtlCache[str] = TtlCache(max_entries=2)
    cache.put("a", "A", expires=10.0)
    cache.put("b", "B", expires=10.0)
    cache.put("c", "C", expires=10.0)
    assert [cache.get(k, now=0.0) for k in "abc"] == [None, "B", "C"]
    assert cache.get("b", now=10.0) is None  # expired at its own deadline
