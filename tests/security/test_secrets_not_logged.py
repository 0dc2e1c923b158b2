"""Secrets never reach a log: every logger at DEBUG (aiohttp's access and server logs included)
through the admin CLI, enrollment, heartbeats, downloads, dispatches, refusals, revocation and
failing requests; no operator, enrollment or device token appears in any record, nor its SHA-256.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging

import pytest

from service import cli
from service.settings import StorageMode
from tests.support.app import Api


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def run_cli(*argv: str) -> int:
    return cli.main(list(argv))


async def test_no_token_nor_its_hash_is_ever_logged(
    api: Api,
    mode: StorageMode,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.DEBUG)  # the root logger: every logger propagates to it
    for name in ("aiohttp.access", "aiohttp.server", "aiohttp.web", "asyncpg", "service", "telemetry"):
        caplog.set_level(logging.DEBUG, logger=name)
    monkeypatch.setenv("DATABASE_URL", api.db_url)
    monkeypatch.setenv("TELEMETRY_STORAGE_MODE", mode)
    monkeypatch.setenv("TELEMETRY_LOG_LEVEL", "DEBUG")
    secrets = [api.operator_token]

    # admin CLI: an operator and an enrollment token, printed once on stdout (not logged)
    capsys.readouterr()
    assert await asyncio.to_thread(run_cli, "admin", "create-operator", "bob") == 0
    assert await asyncio.to_thread(run_cli, "admin", "create-enrollment-token", "--max-uses", "2") == 0
    out = capsys.readouterr().out.split()
    bob, cli_enrollment = out
    assert bob.startswith("op_") and cli_enrollment.startswith("enr_")
    secrets += [bob, cli_enrollment]

    # enrollment over the API, with both kinds of enrollment token
    r = await api.client.post("/v1/enrollment-tokens", json={"note": "n"}, headers=bearer(bob))
    assert r.status == 201
    api_enrollment = (await r.json())["token"]
    secrets.append(api_enrollment)
    device_tokens = []
    for device_id, enrollment in (("log-a", cli_enrollment), ("log-b", api_enrollment)):
        r = await api.client.post("/v1/enroll", json={"enrollment_token": enrollment, "device_id": device_id})
        assert r.status == 201
        device_tokens.append((await r.json())["device_token"])
    secrets += device_tokens
    dev_a, dev_b = (bearer(t) for t in device_tokens)

    # the everyday traffic
    assert (
        await api.client.post("/v1/heartbeats", json={"status": "ok", "battery_pct": 9}, headers=dev_a)
    ).status == 200
    r = await api.client.post(
        "/v1/apk-downloads", json={"build_id": "b1", "outcome": "completed"}, headers=dev_b
    )
    assert r.status == 201
    body = {"request_id": "log-r1", "device_id": "log-a", "action": "ping"}
    assert (await api.client.post("/v1/dispatches", json=body, headers=api.op())).status == 201
    assert (await api.client.get("/v1/devices/log-a/heartbeats", headers=api.op())).status == 200

    # refusals: a spent enrollment token, the wrong kind, a token in a bad body, a revoked device
    r = await api.client.post("/v1/enroll", json={"enrollment_token": api_enrollment, "device_id": "log-c"})
    assert r.status == 401
    r = await api.client.post("/v1/enroll", json={"enrollment_token": cli_enrollment, "device_id": "bad id"})
    assert r.status == 422
    r = await api.client.post("/v1/enroll", json={"enrollment_token": cli_enrollment, "device_id": 7, "x": 1})
    assert r.status == 422
    assert (await api.client.get("/v1/devices/log-a", headers=dev_a)).status == 403
    assert (
        await api.client.post("/v1/heartbeats", json={"status": "ok", "battery_pct": 9}, headers=api.op())
    ).status == 403
    assert (await api.client.post("/v1/heartbeats", data=b"{", headers=dev_b)).status == 400
    assert (await api.client.post("/v1/devices/log-a/revoke", headers=bearer(bob))).status == 200
    assert (
        await api.client.post("/v1/heartbeats", json={"status": "ok", "battery_pct": 9}, headers=dev_a)
    ).status == 401
    # an unexpected server error is logged with its traceback: that must not carry the credential either
    r = await api.client.get("/v1/dispatches/a%00b", headers=api.op())
    assert r.status in (404, 500)

    records = caplog.records
    assert any(rec.name == "aiohttp.access" for rec in records), "the access log was not captured"
    assert any("/v1/enroll" in rec.getMessage() for rec in records)
    hashes = [hashlib.sha256(s.encode()).hexdigest() for s in secrets]
    texts = [caplog.text] + [
        " ".join([rec.getMessage(), repr(rec.args), repr(getattr(rec, "exc_text", "")), repr(rec.__dict__)])
        for rec in records
    ]
    leaked = [
        (kind, rec_text[:300])
        for kind, needle in [*(("token", s) for s in secrets), *(("sha256", h) for h in hashes)]
        for rec_text in texts
        if needle in rec_text
    ]
    assert leaked == []
