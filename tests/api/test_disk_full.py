"""A full data disk (PostgreSQL's `disk_full`, SQLSTATE 53100) over HTTP: writes are answered
503 with Retry-After (never 422, which tells a device its data is refused for good, nor 500),
every 2xx is stored, the condition is logged when it starts and when it ends (not once per
request), and writes succeed again as soon as space is freed, without a restart.

The per-test database lives on a small tmpfs of its own (a TABLESPACE there), which a filler
file fills to within a few hundred kilobytes; heartbeats in bulk then fill the rest."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from service.settings import Settings, StorageMode
from tests.support.app import Api, first_maintenance_round
from tests.support.cluster import TestServer, as_admin

# The tmpfs only takes memory for what is written: it must hold a migrated database (about
# 10 MB in postgres mode, more with TimescaleDB's catalog) plus what the test writes.
DISK_SIZE = "64m"
# Left free by the filler: a few thousand heartbeats' worth, so that some commit first.
# Room for the first flushes: in timescale mode they create chunks (heartbeats, events) first.
FREE_BYTES = 768 * 1024
PER_REQUEST = 250
DEVICES = 4


@pytest.fixture
def small_disk(pg_server: TestServer) -> Iterator[Path]:
    """A fresh tmpfs of DISK_SIZE, owned by the server's account."""
    if pg_server.cluster is None:
        pytest.skip("TEST_DATABASE_URL is set: that server's disk is not one this test can mount")
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs for the database needs root")
    path = Path(tempfile.mkdtemp(prefix="telemetry-small-disk-"))
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_SIZE},mode=0700", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        path.rmdir()
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.strip() or mounted.returncode}")
    try:
        owner = pg_server.cluster.pgdata.stat()
        os.chown(path, owner.st_uid, owner.st_gid)
        yield path
    finally:
        subprocess.run(["umount", "--lazy", str(path)], check=False)
        with contextlib.suppress(OSError):
            path.rmdir()


@pytest.fixture
async def empty_db(pg_server: TestServer, mode: StorageMode, small_disk: Path) -> AsyncIterator[str]:
    """Overrides conftest's: the per-test database, whole, in a tablespace on `small_disk`."""
    suffix = uuid.uuid4().hex[:12]
    name, tablespace = f"t_{suffix}", f"small_{suffix}"
    await as_admin(
        pg_server,
        f"CREATE TABLESPACE {tablespace} LOCATION '{small_disk}'",
        f'CREATE DATABASE "{name}" TABLESPACE {tablespace}',
    )
    try:
        yield pg_server.url_for(name)
    finally:
        await as_admin(
            pg_server,
            f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)',
            f"DROP TABLESPACE IF EXISTS {tablespace}",
        )


@pytest.fixture
def app_settings(app_settings: Settings) -> Settings:
    # Requests of the devices share batches, so a batch of several requests meets the full disk.
    return replace(app_settings, batch_window=timedelta(milliseconds=50))


def dev(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def fill_to(disk: Path, free_bytes: int) -> Path:
    """A filler file that leaves about `free_bytes` free on `disk`; delete it to free the space."""
    stat = os.statvfs(disk)
    size = max(0, stat.f_bavail * stat.f_frsize - free_bytes)
    filler = disk / "filler"
    with filler.open("wb") as out:
        chunk = b"\0" * (1 << 20)
        while size > 0:
            size -= out.write(chunk[: min(size, len(chunk))])
    return filler


def is_about_disk(record: logging.LogRecord) -> bool:
    cause = record.exc_info[1] if record.exc_info else None
    return "disk" in record.getMessage().lower() or isinstance(cause, asyncpg.DiskFullError)


async def test_a_full_disk_answers_503_never_422_or_500_and_writes_recover_once_space_is_freed(
    api: Api, small_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    tokens = [await api.enroll(f"full-{i}") for i in range(DEVICES)]
    start = (datetime.now(UTC) - timedelta(hours=40)).replace(microsecond=0)
    acked: set[tuple[str, datetime]] = set()
    statuses: list[tuple[str, int, str | None]] = []  # (what, status, Retry-After)
    sent = 0

    async def heartbeats(device: int) -> None:
        nonlocal sent
        first = start + timedelta(seconds=10 * PER_REQUEST * (sent + device))
        times = [first + timedelta(seconds=10 * i) for i in range(PER_REQUEST)]
        body = {"heartbeats": [{"ts": t.isoformat(), "status": "ok", "battery_pct": 50} for t in times]}
        r = await api.client.post("/v1/heartbeats", json=body, headers=dev(tokens[device]))
        statuses.append(("heartbeats", r.status, r.headers.get("Retry-After")))
        if 200 <= r.status < 300:
            acked.update((f"full-{device}", t) for t in times)

    async def other_paths() -> None:
        """Writes and reads outside the writer: an enrollment token, an enrollment, a read."""
        r = await api.client.post("/v1/enrollment-tokens", json={}, headers=api.op())
        statuses.append(("enrollment-token", r.status, r.headers.get("Retry-After")))
        if r.status == 201:
            token = (await r.json())["token"]
            r = await api.client.post(
                "/v1/enroll", json={"enrollment_token": token, "device_id": f"late-{uuid.uuid4().hex[:6]}"}
            )
            statuses.append(("enroll", r.status, r.headers.get("Retry-After")))
        r = await api.client.get("/v1/devices/full-0/heartbeats?limit=5", headers=api.op())
        statuses.append(("read", r.status, r.headers.get("Retry-After")))

    # The app's first maintenance round (in timescale mode it runs the jobs a test database's
    # missing scheduler does not) writes too: let it finish before the disk is filled.
    await first_maintenance_round(api)
    # Chunks and partitions for the whole time range the test writes, made before the disk is
    # filled: in timescale mode the first flushes would otherwise spend the room creating them.
    for device in range(DEVICES):
        times = [start + timedelta(minutes=30 * i) for i in range(80)]
        warm = {"heartbeats": [{"ts": t.isoformat(), "status": "ok", "battery_pct": 50} for t in times]}
        r = await api.client.post("/v1/heartbeats", json=warm, headers=dev(tokens[device]))
        assert r.status == 200, await r.text()
    filler = fill_to(small_disk, FREE_BYTES)
    for _ in range(80):
        await asyncio.gather(*(heartbeats(d) for d in range(DEVICES)), other_paths())
        sent += DEVICES
        if sum(what == "heartbeats" and s >= 300 for what, s, _ in statuses) >= 12:
            break
    else:
        pytest.fail(f"the disk never filled: {statuses[-8:]}")

    refused = sorted({(what, s) for what, s, _ in statuses if not (200 <= s < 300 or s == 503)})
    assert refused == [], refused
    assert any(s == 200 for what, s, _ in statuses if what == "heartbeats")
    assert all(retry for _, s, retry in statuses if s == 503)
    disk_lines = [r.getMessage() for r in caplog.records if is_about_disk(r)]
    # When it started, and once per flap while the last free pages come and go: a state change
    # each (start, recovery, start…), never one per request.
    failed = sum(1 for _, s, _ in statuses if s == 503)
    assert 1 <= len(disk_lines) <= 8 and len(disk_lines) < failed, (len(disk_lines), failed, disk_lines)
    assert disk_lines[0].startswith("database out of disk space"), disk_lines

    # Outside the writer: enrollment tokens are inserted by their handler; with the disk full,
    # their table's last page fills within a few dozen.
    for _ in range(400):
        r = await api.client.post("/v1/enrollment-tokens", json={}, headers=api.op())
        statuses.append(("enrollment-token", r.status, r.headers.get("Retry-After")))
        if r.status != 201:
            break
    what, status, retry_after = statuses[-1]
    assert (what, status) == ("enrollment-token", 503) and retry_after, statuses[-1]

    filler.unlink()
    statuses.clear()
    await asyncio.gather(*(heartbeats(d) for d in range(DEVICES)))
    sent += DEVICES
    await other_paths()
    assert [s for _, s, _ in statuses] == [200] * DEVICES + [201, 201, 200]  # at once, no restart

    conn = await asyncpg.connect(api.db_url)
    try:
        rows = await conn.fetch("SELECT device_id, ts FROM device_heartbeats")
        stored = {(r["device_id"], r["ts"]) for r in rows}
    finally:
        await conn.close()
    assert acked <= stored, f"{len(acked - stored)} acknowledged heartbeats are missing"
    assert any("recovered" in r.getMessage() for r in caplog.records if is_about_disk(r))
