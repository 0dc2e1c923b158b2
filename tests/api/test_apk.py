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
from service.app import ROW_STAGES
from service.db import locks
from service.ingest.connection import prepare_connection
from service.rollout import counts, verification
from service.rollout.downloads import DownloadRow, merge_downloads
from tests.support.app import Api


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
        # Then the funnel's snapshot, as the same maintenance round does.
        assert (await counts.run(conn, timedelta(days=7))).error is None
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
    await register(api, build(42))
    await register(api, build(41))
    rng = random.Random(13)
    devices = [f"phone-{i}" for i in range(30)]
    conn = await asyncpg.connect(api.db_url)
    # Hold the maintenance lock (after the app's first round, if it is running): the app's own
    # rounds skip, so nothing verifies or snapshots behind the test's back; the test runs the
    # funnel's maintenance step itself.
    await conn.execute("SELECT pg_advisory_lock($1)", locks.MAINTENANCE)
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
        # Stored by the writer's own statement, which also counts them per build and hour.
        await prepare_connection(conn, ROW_STAGES)
        async with conn.transaction():
            await merge_downloads(
                conn,
                [
                    DownloadRow(i, ts, b, d, None, outcome, None)
                    for i, (ts, b, d, outcome) in enumerate(events)
                    if ts > now - timedelta(days=7)  # what retention would keep
                ],
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
        # The maintenance step that snapshots the reporting devices and the median.
        assert (await counts.run(conn, timedelta(days=7))).error is None
        installs = [
            (r["device_id"], r["status"], r["installed_at"], r["verified"])
            for r in await conn.fetch(
                "SELECT device_id, status, installed_at, verified FROM apk_installations"
            )
        ]
        r = await api.client.get("/v1/apk-versions/build-42/rollout", headers=api.op())
        assert r.status == 200
        funnel = await r.json()
    finally:
        await conn.close()

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


async def test_installation_counts_follow_reports_verification_and_device_deletion(api: Api) -> None:
    await register(api, build(42))
    await register(api, build(41))
    tokens = {f"phone-{i}": await api.enroll(f"phone-{i}") for i in range(8)}
    rng = random.Random(7)
    for token in tokens.values():
        moves = ("installing", rng.choice(["installed", "failed"]), rng.choice(["installing", "installed"]))
        for status in moves:
            await report(api, token, build_id=rng.choice(["build-42", "build-41"]), status=status)
    conn = await asyncpg.connect(api.db_url)
    try:
        await conn.executemany(
            "INSERT INTO device_app_versions (device_id, app_version, reported_at)"
            " VALUES ($1, '1.42.0', now())",
            [(d,) for d in list(tokens)[:4]],
        )
        await verification.verify_installations(conn)
        await conn.execute("DELETE FROM devices WHERE id = ANY($1::text[])", ["phone-0", "phone-5"])
        brute = {
            r["build_id"]: r
            for r in await conn.fetch(
                "SELECT v.build_id,"
                " count(*) FILTER (WHERE i.status = 'installing') AS installing,"
                " count(*) FILTER (WHERE i.status = 'installed') AS installed,"
                " count(*) FILTER (WHERE i.status = 'failed') AS failed,"
                " count(*) FILTER (WHERE i.verified) AS verified"
                " FROM apk_versions v LEFT JOIN apk_installations i ON i.apk_version_id = v.id"
                " GROUP BY v.build_id"
            )
        }
    finally:
        await conn.close()
    assert brute["build-42"]["verified"] > 0, "the data must exercise verification"
    for build_id, expected in brute.items():
        r = await api.client.get(f"/v1/apk-versions/{build_id}/rollout", headers=api.op())
        assert (await r.json())["installations"] == {k: expected[k] for k in STATUS_COUNTS}


STATUS_COUNTS = ("installing", "installed", "failed", "verified")


async def test_download_count_hours_older_than_the_window_and_a_chunk_are_pruned(api: Api) -> None:
    conn = await asyncpg.connect(api.db_url)
    # The app's maintenance prunes the same counts: hold its lock, so that its rounds skip and
    # the test's prune is the one that removes them (the lock ends with the connection).
    await conn.execute("SELECT pg_advisory_lock($1)", locks.MAINTENANCE)
    try:
        hour = await conn.fetchval(f"SELECT {counts.hour_of('now()')}")
        ages = [timedelta(hours=h) for h in (0, 24 * 7, 24 * 8 - 2, 24 * 8 + 2, 24 * 30)]
        await conn.executemany(
            "INSERT INTO apk_download_counts (build_id, bucket_start, outcome, events)"
            " VALUES ('b', $1, 'started', 1)",
            [(hour - age,) for age in ages],
        )
        assert await counts.prune_download_counts(conn, timedelta(days=7)) == 2
        kept = {r[0] for r in await conn.fetch("SELECT bucket_start FROM apk_download_counts")}
    finally:
        await conn.close()
    assert kept == {hour - age for age in ages[:3]}
