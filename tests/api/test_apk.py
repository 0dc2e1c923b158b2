"""APK builds registered by CI, installs reported by devices, verified by heartbeats, and the
rollout funnel, whose counts must equal brute-force counts over the same rows."""

from __future__ import annotations

import hashlib
import random
import statistics
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from service.admin import create_operator
from service.api.credentials import token_hash
from service.rollout import verification
from tests.conftest import Api


def dev(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def build(code: int = 42, **changes: Any) -> dict[str, Any]:
    body = {
        "package_name": "com.example.agent",
        "version_code": code,
        "version_name": f"1.{code}.0",
        "build_id": f"build-{code}",
        "sha256": hashlib.sha256(str(code).encode()).hexdigest(),
        "size_bytes": 10_000_000 + code,
        "ci_commit_sha": "a" * 40,
        "ci_run_id": f"run-{code}",
    }
    return body | changes


async def register(api: Api, body: dict[str, Any], headers: dict[str, str] | None = None) -> tuple[int, Any]:
    r = await api.client.post("/v1/apk-versions", json=body, headers=headers or api.op())
    return r.status, await r.json()


async def report(api: Api, token: str, **body: Any) -> tuple[int, Any]:
    r = await api.client.post("/v1/apk-installations", json=body, headers=dev(token))
    return r.status, await r.json()


async def operator_token(api: Api, name: str, role: str) -> dict[str, str]:
    conn = await asyncpg.connect(api.db_url)
    try:
        return {"Authorization": f"Bearer {await create_operator(conn, name, role=role)}"}  # type: ignore[arg-type]
    finally:
        await conn.close()


async def test_registration_is_idempotent_and_conflicting_content_is_409(api: Api) -> None:
    status, created = await register(api, build())
    assert status == 201 and created["build_id"] == "build-42" and created["sha256"] == build()["sha256"]
    status, again = await register(api, build())
    assert status == 200 and again == created
    status, body = await register(api, build(sha256="b" * 64))
    assert status == 409 and body["error"]["field"] == "build_id"
    status, body = await register(api, build(build_id="another-build"))
    assert status == 409 and body["error"]["field"] == "version_code"
    assert await api.count("SELECT count(*) FROM apk_versions") == 1
    r = await api.client.get("/v1/apk-versions?package_name=com.example.agent", headers=api.op())
    assert [v["build_id"] for v in (await r.json())["versions"]] == ["build-42"]
    r = await api.client.get("/v1/apk-versions?package_name=not..valid", headers=api.op())
    assert r.status == 422 and (await r.json())["error"]["field"] == "package_name"


async def test_registration_refuses_bad_fields_naming_them(api: Api) -> None:
    for changes, field in (
        ({"sha256": "XYZ"}, "sha256"),
        ({"version_code": 0}, "version_code"),
        ({"size_bytes": -1}, "size_bytes"),
        ({"package_name": "1bad"}, "package_name"),
    ):
        status, body = await register(api, build(**changes))
        assert status == 422 and body["error"]["field"] == field, changes
    assert await api.count("SELECT count(*) FROM apk_versions") == 0


async def test_ci_role_can_register_builds_and_nothing_else(api: Api) -> None:
    ci = await operator_token(api, "pipeline", "ci")
    status, _ = await register(api, build(), headers=ci)
    assert status == 201
    r = await api.client.get("/v1/apk-versions", headers=ci)
    assert r.status == 403
    r = await api.client.post(
        "/v1/dispatches", json={"request_id": "r", "device_id": "d", "action": "lock"}, headers=ci
    )
    assert r.status == 403
    viewer = await operator_token(api, "watcher", "viewer")
    status, _ = await register(api, build(43), headers=viewer)
    assert status == 403
    r = await api.client.get("/v1/apk-versions", headers=viewer)
    assert r.status == 200


async def test_installation_moves_forward_only_and_a_failed_install_may_be_retried(api: Api) -> None:
    token = await api.enroll("phone-1")
    await register(api, build())
    status, body = await report(api, token, build_id="build-42", status="installing")
    assert status == 201 and body["status"] == "installing" and body["verified"] is False
    status, body = await report(api, token, build_id="build-42", status="failed", error="disk full")
    assert status == 200 and body["status"] == "failed" and body["error"] == "disk full"
    status, body = await report(api, token, build_id="build-42", status="failed")
    assert status == 200 and body["changed"] is False and body["error"] == "disk full"
    status, body = await report(api, token, build_id="build-42", status="installing")
    assert status == 200 and body["status"] == "installing"
    status, body = await report(api, token, build_id="build-42", status="installed")
    assert status == 200 and body["installed_at"] is not None
    for backward in ("installing", "failed"):
        status, body = await report(api, token, build_id="build-42", status=backward)
        assert status == 409 and body["installation"]["status"] == "installed", backward
        assert body["error"]["field"] == "status"
    assert await api.count("SELECT count(*) FROM apk_installations") == 1


async def test_installation_of_an_unknown_build_is_404_and_bad_status_is_422(api: Api) -> None:
    token = await api.enroll("phone-1")
    status, body = await report(api, token, build_id="nope", status="installing")
    assert status == 404 and body["error"]["field"] == "build_id"
    await register(api, build())
    status, body = await report(api, token, build_id="build-42", status="done")
    assert status == 422 and body["error"]["field"] == "status"
    r = await api.client.get("/v1/apk-versions/nope/rollout", headers=api.op())
    assert r.status == 404 and (await r.json())["error"]["field"] == "build_id"


async def test_a_heartbeat_reporting_the_version_name_verifies_the_install(api: Api) -> None:
    token = await api.enroll("phone-1")
    other = await api.enroll("phone-2")
    await register(api, build())
    await report(api, token, build_id="build-42", status="installing")
    await report(api, other, build_id="build-42", status="installing")
    for t, version in ((token, "1.42.0"), (other, "1.41.0")):
        r = await api.client.post(
            "/v1/heartbeats", json={"status": "ok", "battery_pct": 80, "app_version": version}, headers=dev(t)
        )
        assert r.status == 200
    # The maintenance step (the app's own task may hold the maintenance lock right now).
    conn = await asyncpg.connect(api.db_url)
    try:
        result = await verification.run(conn, timedelta(minutes=15))
    finally:
        await conn.close()
    # (The app's own first round may have got there first: the state is what counts.)
    assert result.error is None
    status, body = await report(api, token, build_id="build-42", status="installed")
    assert status == 200 and body["verified"] is True and body["changed"] is False
    status, body = await report(api, other, build_id="build-42", status="installing")
    assert body["verified"] is False and body["status"] == "installing"
    r = await api.client.get("/v1/apk-versions/build-42/rollout", headers=api.op())
    funnel = await r.json()
    assert funnel["devices_reporting_version"] == 1
    assert funnel["installations"] == {"installing": 1, "installed": 1, "failed": 0, "verified": 1}


async def test_funnel_counts_equal_brute_force_counts(api: Api) -> None:
    # A maintenance round verifies installs from device_app_versions: let the first one finish
    # before the data below is written, so the counts are the test's alone.
    await api.first_maintenance_round()
    await register(api, build(42))
    await register(api, build(41))
    rng = random.Random(13)
    devices = [f"phone-{i}" for i in range(30)]
    conn = await asyncpg.connect(api.db_url)
    try:
        await conn.executemany(
            "INSERT INTO devices (id, token_hash) VALUES ($1, $2)",
            [(d, token_hash(f"dev_{d}")) for d in devices],
        )
        now = await conn.fetchval("SELECT now()")
        events = []
        for d in devices:
            for _ in range(rng.randint(0, 4)):
                events.append(
                    (
                        now - timedelta(hours=rng.uniform(0.5, 200)),  # some past the 7-day window
                        rng.choice(["build-42", "build-41"]),
                        d,
                        rng.choice(["started", "completed", "failed", "cancelled"]),
                    )
                )
        await conn.executemany(
            "INSERT INTO apk_download_events (ts, build_id, device_id, outcome) VALUES ($1, $2, $3, $4)",
            [e for e in events if e[0] > now - timedelta(days=7)],  # what retention would keep
        )
        version_id = await conn.fetchval("SELECT id FROM apk_versions WHERE build_id = 'build-42'")
        chosen = {d: rng.choice(["installing", "installed", "failed", None]) for d in devices}
        await conn.executemany(
            "INSERT INTO apk_installations (device_id, apk_version_id, status) VALUES ($1, $2, $3)",
            [(d, version_id, "failed" if s == "failed" else "installing") for d, s in chosen.items() if s],
        )
        reporting = {d: rng.choice(["1.42.0", "1.41.0"]) for d in devices[:20]}
        await conn.executemany(
            "INSERT INTO device_app_versions (device_id, app_version, reported_at) VALUES ($1, $2, now())",
            list(reporting.items()),
        )
        stored = await conn.fetch("SELECT ts, build_id, device_id, outcome FROM apk_download_events")
        # The installs are confirmed the way devices do it: through the API, which copies the
        # download they came from.
        for d, status in chosen.items():
            if status == "installed":
                r = await api.client.post(
                    "/v1/apk-installations",
                    json={"build_id": "build-42", "status": "installed"},
                    headers=dev(f"dev_{d}"),
                )
                assert r.status == 200, await r.text()
        await conn.execute(
            "UPDATE apk_installations SET verified = true WHERE device_id = ANY($1::text[])", devices[::3]
        )
        installs = [
            (r["device_id"], r["status"], r["installed_at"], r["verified"])
            for r in await conn.fetch(
                "SELECT device_id, status, installed_at, verified FROM apk_installations"
            )
        ]
    finally:
        await conn.close()

    r = await api.client.get("/v1/apk-versions/build-42/rollout", headers=api.op())
    assert r.status == 200
    funnel = await r.json()
    since = datetime.fromisoformat(funnel["downloads"]["since"])
    mine = [e for e in stored if e["build_id"] == "build-42" and e["ts"] >= since]
    for outcome in ("started", "completed", "failed", "cancelled"):
        assert funnel["downloads"][outcome] == sum(e["outcome"] == outcome for e in mine), outcome
    assert funnel["downloads"]["window_seconds"] == 7 * 86400
    for status in ("installing", "installed", "failed"):
        assert funnel["installations"][status] == sum(s == status for s in chosen.values())
    assert funnel["installations"]["verified"] == sum(v for *_, v in installs)
    assert funnel["devices_reporting_version"] == sum(v == "1.42.0" for v in reporting.values())
    delays = []
    for d, status, at, _ in installs:
        if status != "installed":
            continue
        completed = [
            e["ts"] for e in mine if e["device_id"] == d and e["outcome"] == "completed" and e["ts"] <= at
        ]
        if completed:
            delays.append((at - max(completed)).total_seconds())
    assert delays, "the data must give the median something to say"
    assert abs(funnel["median_download_to_install_seconds"] - statistics.median(delays)) < 1e-3
    assert funnel["from_expiring_events"] == ["downloads"]
    assert datetime.fromisoformat(funnel["downloads"]["since"]) < datetime.now(UTC)
