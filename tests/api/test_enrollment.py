"""Enrollment you can trust: a revoked id stays out until reinstated, bound tokens, credential
rotation on re-enrollment, the throttle per client address (behind trusted proxies only) and
under a parallel burst, and refusals counted per address and window."""

from __future__ import annotations

import asyncio
import ipaddress
from dataclasses import replace
from typing import Any

import pytest

from service.api.client_address import client_address
from service.api.state import SERVICES
from service.api.throttle import FailureThrottle
from service.settings import Settings, SettingsError
from tests.support.app import Api

OK = {"status": "ok", "battery_pct": 50}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def enroll(api: Api, token: str, device_id: str, **headers: str) -> Any:
    return await api.client.post(
        "/v1/enroll", json={"enrollment_token": token, "device_id": device_id}, headers=headers
    )


async def test_a_revoked_device_cannot_enroll_until_reinstated(api: Api) -> None:
    old = await api.enroll("dev-r")
    r = await api.client.post("/v1/devices/dev-r/revoke", headers=api.op())
    assert r.status == 200 and await r.json() == {
        "device_id": "dev-r",
        "credential_revoked": True,
        "banned": True,
    }
    unbound, bound = await api.mint(), await api.mint(device_id="dev-r")
    for token in (unbound, bound):
        r = await enroll(api, token["token"], "dev-r")
        assert r.status == 403 and (await r.json())["error"]["code"] == "device_banned"
        assert await api.count("SELECT use_count FROM enrollment_tokens WHERE id = $1", token["id"]) == 0
    r = await api.client.get("/v1/devices/dev-r", headers=api.op())
    assert (await r.json())["banned"] is True

    r = await api.client.post("/v1/devices/dev-r/reinstate", headers=api.op())
    assert r.status == 200
    assert await r.json() == {"device_id": "dev-r", "credential_revoked": True, "banned": False}
    # reinstating revives nothing: the old credential stays dead
    assert (await api.client.post("/v1/heartbeats", json=OK, headers=bearer(old))).status == 401
    # an existing id comes back only with a token bound to it
    r = await enroll(api, unbound["token"], "dev-r")
    assert r.status == 409 and (await r.json())["error"]["code"] == "already_enrolled"
    r = await enroll(api, bound["token"], "dev-r")
    assert r.status == 201
    new = (await r.json())["device_token"]
    assert (await api.client.post("/v1/heartbeats", json=OK, headers=bearer(new))).status == 200
    assert (await api.client.post("/v1/heartbeats", json=OK, headers=bearer(old))).status == 401
    events = await api.count(
        "SELECT count(*) FROM events WHERE device_id = 'dev-r'"
        " AND type IN ('device.revoked', 'device.reinstated', 'device.re_enrolled')"
    )
    assert events == 3


async def test_reinstate_needs_an_admin_and_a_known_device(api: Api) -> None:
    r = await api.client.post("/v1/devices/nobody/reinstate", headers=api.op())
    assert r.status == 404
    token = await api.enroll("dev-x")
    assert (await api.client.post("/v1/devices/dev-x/reinstate", headers=bearer(token))).status == 403
    assert (await api.client.post("/v1/devices/dev-x/reinstate")).status == 401


async def test_a_bound_token_enrolls_only_its_device_id(api: Api) -> None:
    bound = await api.mint(device_id="phone-1", max_uses=2)
    assert bound["device_id"] == "phone-1"
    # The same request id for both, so the bodies can be compared byte for byte.
    same_id = {"X-Request-ID": "compare-401"}
    unknown = await enroll(api, "enr_" + "B" * 43, "phone-2", **same_id)
    other = await enroll(api, bound["token"], "phone-2", **same_id)
    # the same 401 as a token that does not exist, and the token is not spent
    assert other.status == 401 and await other.read() == await unknown.read()
    assert await api.count("SELECT use_count FROM enrollment_tokens WHERE id = $1", bound["id"]) == 0
    assert await api.count("SELECT count(*) FROM devices WHERE id = 'phone-2'") == 0
    assert (await enroll(api, bound["token"], "phone-1")).status == 201


async def test_re_enrolling_with_a_bound_token_rotates_the_credential_at_once(api: Api) -> None:
    old = await api.enroll("phone-r")
    assert (await api.client.post("/v1/heartbeats", json=OK, headers=bearer(old))).status == 200  # cached
    # a factory-reset phone: no revocation, a token bound to its id
    new = await api.enroll("phone-r", bound=True)
    assert new != old
    assert (await api.client.post("/v1/heartbeats", json=OK, headers=bearer(old))).status == 401
    r = await api.client.post("/v1/heartbeats", json=OK, headers=bearer(new))
    assert r.status == 200 and (await r.json())["device_id"] == "phone-r"
    assert await api.count("SELECT count(*) FROM devices WHERE id = 'phone-r'") == 1


async def test_two_first_enrollments_of_one_id_cannot_both_win(api: Api) -> None:
    a, b = await api.mint(), await api.mint()
    responses = await asyncio.gather(enroll(api, a["token"], "race"), enroll(api, b["token"], "race"))
    assert sorted(r.status for r in responses) == [201, 409]
    assert await api.count("SELECT sum(use_count) FROM enrollment_tokens") == 1


async def test_refusals_are_one_row_per_address_and_window(api: Api) -> None:
    for i in range(7):
        assert (await enroll(api, "enr_guess", f"g{i}")).status == 401
    rows = await api.count("SELECT count(*) FROM enrollment_events WHERE outcome = 'refused'")
    attempts = await api.count("SELECT attempts FROM enrollment_events WHERE outcome = 'refused'")
    assert (rows, attempts) == (1, 7)
    assert (
        await api.count(
            "SELECT count(*) FROM enrollment_events WHERE outcome = 'refused'"
            " AND remote_addr = '127.0.0.1' AND window_start IS NOT NULL AND device_id = 'g6'"
        )
        == 1
    )


async def test_throttle_is_per_client_address_behind_a_trusted_proxy(api: Api) -> None:
    svc = api.app[SERVICES]
    # without trusted proxies X-Forwarded-For is ignored: the peer is the client
    for i in range(10):
        assert (await enroll(api, "enr_guess", "g", **{"X-Forwarded-For": f"198.51.100.{i}"})).status == 401
    good = await api.mint()
    assert (await enroll(api, good["token"], "real", **{"X-Forwarded-For": "203.0.113.9"})).status == 429

    svc.settings = replace(svc.settings, trusted_proxies=(ipaddress.ip_network("127.0.0.0/8"),))
    svc.enrollment_throttle = FailureThrottle()
    # behind the proxy, one guesser is locked out and nobody else is
    for _ in range(10):
        r = await enroll(api, "enr_guess", "g", **{"X-Forwarded-For": "198.51.100.7"})
        assert r.status == 401
    assert (await enroll(api, "enr_guess", "g", **{"X-Forwarded-For": "198.51.100.7"})).status == 429
    # spoofing entries to the left of the proxy's own does not help the guesser
    r = await enroll(api, "enr_guess", "g", **{"X-Forwarded-For": "10.9.9.9, 198.51.100.7"})
    assert r.status == 429
    assert (await enroll(api, good["token"], "real", **{"X-Forwarded-For": "203.0.113.9"})).status == 201
    assert (
        await api.count(
            "SELECT attempts FROM enrollment_events"
            " WHERE outcome = 'refused' AND remote_addr = '198.51.100.7'"
        )
        == 10
    )


def test_client_address_takes_the_right_most_untrusted_hop() -> None:
    proxies = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8"))
    assert client_address("10.0.0.1", ["1.2.3.4"], ()) == "10.0.0.1"  # no trusted proxies
    assert client_address("192.0.2.1", ["1.2.3.4"], proxies) == "192.0.2.1"  # untrusted peer
    assert client_address("10.0.0.1", ["1.2.3.4"], proxies) == "1.2.3.4"
    assert client_address("10.0.0.1", ["6.6.6.6, 1.2.3.4, 10.0.0.2"], proxies) == "1.2.3.4"
    assert client_address("10.0.0.1", ["6.6.6.6", "1.2.3.4"], proxies) == "1.2.3.4"  # two headers
    assert client_address("10.0.0.1", ["10.0.0.3, 10.0.0.2"], proxies) == "10.0.0.3"  # all trusted
    assert client_address("10.0.0.1", ["garbage, 10.0.0.2"], proxies) == "10.0.0.2"  # stops at garbage
    assert client_address("10.0.0.1", [], proxies) == "10.0.0.1"
    assert client_address("fd00::1", ["[2001:db8::5]:443"], proxies) == "2001:db8::5"
    assert client_address("::ffff:10.0.0.1", ["1.2.3.4:5555"], proxies) == "1.2.3.4"
    assert client_address(None, ["1.2.3.4"], proxies) == "unknown"


async def test_a_parallel_burst_of_bad_enrollments_is_limited(api: Api) -> None:
    limit = api.app[SERVICES].enrollment_throttle.limit
    responses = await asyncio.gather(*(enroll(api, "enr_guess", f"b{i}") for i in range(30)))
    statuses = [r.status for r in responses]
    assert statuses.count(401) <= limit and statuses.count(401) >= 1
    assert statuses.count(429) == 30 - statuses.count(401)
    # only the attempts let through reached the database
    assert await api.count(
        "SELECT attempts FROM enrollment_events WHERE outcome = 'refused'"
    ) == statuses.count(401)


def test_trusted_proxies_are_read_from_the_environment() -> None:
    assert Settings.from_env({}).trusted_proxies == ()
    parsed = Settings.from_env({"TELEMETRY_TRUSTED_PROXIES": "10.0.0.0/8, ::1,192.0.2.7"}).trusted_proxies
    assert [str(net) for net in parsed] == ["10.0.0.0/8", "::1/128", "192.0.2.7/32"]
    for bad in ("10.0.0.0/33", "proxy.example", "10.0.0.1,,"):
        with pytest.raises(SettingsError, match="TELEMETRY_TRUSTED_PROXIES"):
            Settings.from_env({"TELEMETRY_TRUSTED_PROXIES": bad})
