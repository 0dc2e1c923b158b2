"""The embedded cluster is closed by default, on real clusters: a password (kept in a 0600 file)
or no session; no trust line; a 0700 data directory; symlinks left alone; nothing outside the
data directory modified; a second user shares it; a stale or garbled pid file is handled."""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from service.db.background_workers import WorkerSettings, read_worker_settings
from service.db.embedded import (
    EmbeddedPostgres,
    EmbeddedPostgresError,
    find_bindir,
    free_port,
    has_trust_line,
    resolve_database_url,
)
from service.settings import StorageMode
from tests.support.cli import child_env, run_telemetry
from tests.support.serve_process import ServeProcess

ROOT = Path(__file__).resolve().parents[2]
IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(
    not IS_ROOT, reason="only root changes ownership and runs the server as another account"
)


def server_uid() -> int:
    return pwd.getpwnam("postgres").pw_uid if IS_ROOT else os.geteuid()


def as_server_account(*argv: str) -> subprocess.CompletedProcess[str]:
    prefix = ["runuser", "-u", "postgres", "--"] if IS_ROOT else []
    return subprocess.run([*prefix, *argv], capture_output=True, text=True, cwd="/")


def reachable_tempdir(prefix: str) -> Path:
    """A directory of our own that the server's account can enter (mkdtemp makes it 0700)."""
    base = Path(tempfile.mkdtemp(prefix=prefix))
    base.chmod(0o711)
    return base


@pytest.fixture(autouse=True)
def _no_ambient_password(monkeypatch: pytest.MonkeyPatch) -> None:
    """A connection without the password must not find one in the environment or ~/.pgpass."""
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", "/nonexistent")


@pytest.fixture(scope="module")
def base_dir() -> Iterator[Path]:
    """What TELEMETRY_DATA_DIR would be: the cluster lives in its `postgres` subdirectory."""
    base = reachable_tempdir("telemetry-embedded-")
    yield base
    EmbeddedPostgres(base / "postgres").stop("immediate")
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster(base_dir: Path) -> Iterator[EmbeddedPostgres]:
    url, started = resolve_database_url(None, base_dir)
    assert started is not None and url == started.url
    yield started
    started.stop("immediate")


def without_password(cluster: EmbeddedPostgres, password: str | None) -> str:
    auth = "postgres" if password is None else f"postgres:{password}"
    return f"postgresql://{auth}@127.0.0.1:{cluster.port}/postgres"


# -- authentication ------------------------------------------------------------------------------


async def test_the_password_from_the_file_opens_a_session(cluster: EmbeddedPostgres) -> None:
    password = cluster.password_file.read_text().strip()
    assert len(password) >= 32
    assert f":{password}@" in cluster.url
    conn = await asyncpg.connect(cluster.admin_url())
    try:
        assert await conn.fetchval("SELECT current_user") == "postgres"
    finally:
        await conn.close()


@pytest.mark.parametrize("password", [None, "", "wrong-password"])
async def test_a_connection_without_the_password_is_refused(
    cluster: EmbeddedPostgres, password: str | None
) -> None:
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(without_password(cluster, password))


@needs_root
def test_another_local_account_can_neither_read_the_password_nor_log_in(
    cluster: EmbeddedPostgres,
) -> None:
    read = subprocess.run(
        ["runuser", "-u", "nobody", "--", "cat", str(cluster.password_file)], capture_output=True, text=True
    )
    assert read.returncode != 0 and "Permission denied" in read.stderr
    env = {"PATH": os.environ["PATH"], "PGPASSFILE": "/nonexistent"}
    psql = [str(find_bindir() / "psql"), "-w", "-h", "127.0.0.1", "-p", str(cluster.port)]
    login = subprocess.run(
        ["runuser", "-u", "nobody", "--", *psql, "-U", "postgres", "-d", "postgres", "-c", "SELECT 1"],
        capture_output=True,
        text=True,
        env=env,
        cwd="/",
    )
    assert login.returncode != 0
    assert "password" in login.stderr


def test_pg_hba_has_no_trust_line(cluster: EmbeddedPostgres) -> None:
    hba = (cluster.pgdata / "pg_hba.conf").read_text()
    rules = [line.split() for line in hba.splitlines() if line.strip() and not line.startswith("#")]
    assert rules, hba
    assert all(rule[-1] == "scram-sha-256" for rule in rules), hba
    assert not has_trust_line(hba)
    assert has_trust_line("host all all 127.0.0.1/32 trust  # earlier versions\n")


def test_the_cli_reads_the_password_without_database_url(cluster: EmbeddedPostgres, base_dir: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env |= {"TELEMETRY_DATA_DIR": str(base_dir), "TELEMETRY_STORAGE_MODE": "postgres"}
    result = run_telemetry(["migrate", "current"], env, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert cluster.password() not in result.stdout + result.stderr
    assert cluster.running_pid() is not None  # a command that joins the cluster leaves it running


# -- files and permissions -----------------------------------------------------------------------


def test_data_directory_is_0700_and_password_file_0600(cluster: EmbeddedPostgres) -> None:
    for path, mode in ((cluster.data_dir, 0o700), (cluster.pgdata, 0o700), (cluster.password_file, 0o600)):
        st = path.lstat()
        assert stat.S_IMODE(st.st_mode) == mode, path
        assert st.st_uid == server_uid(), path
    lock = (cluster.data_dir / "cluster.lock").lstat()
    assert stat.S_IMODE(lock.st_mode) == 0o600


def test_a_symlink_or_hard_link_in_the_data_directory_is_left_alone(cluster: EmbeddedPostgres) -> None:
    outside = Path(tempfile.mkdtemp(prefix="telemetry-outside-"))
    try:
        target = outside / "target"
        target.write_text("not the database's")
        target.chmod(0o644)
        inner = outside / "dir"
        inner.mkdir()
        (inner / "file").write_text("neither")
        linked = outside / "linked"
        linked.write_text("hard-linked into the data directory")
        before = {p: p.stat() for p in (outside, target, inner, inner / "file", linked)}
        (cluster.data_dir / "planted-file").symlink_to(target)
        (cluster.data_dir / "planted-hardlink").hardlink_to(linked)
        (cluster.pgdata / "planted-dir").symlink_to(inner, target_is_directory=True)

        second = EmbeddedPostgres(cluster.data_dir)
        second.start()  # walks the data directory to fix ownership
        second.stop()

        for path, st in before.items():
            now = path.stat()
            assert (now.st_uid, now.st_gid, now.st_mode) == (st.st_uid, st.st_gid, st.st_mode), path
        assert (cluster.data_dir / "planted-file").is_symlink()
    finally:
        (cluster.data_dir / "planted-file").unlink(missing_ok=True)
        (cluster.data_dir / "planted-hardlink").unlink(missing_ok=True)
        (cluster.pgdata / "planted-dir").unlink(missing_ok=True)
        shutil.rmtree(outside)


@needs_root
def test_a_parent_the_server_account_cannot_enter_is_refused_not_chmodded() -> None:
    closed = Path(tempfile.mkdtemp(prefix="telemetry-closed-"))  # 0700, owned by root
    try:
        with pytest.raises(EmbeddedPostgresError) as refused:
            EmbeddedPostgres(closed / "data" / "postgres").start()
        message = str(refused.value)
        assert f"cannot enter {closed}" in message
        assert f"chmod o+x {closed}" in message and "TELEMETRY_DATA_DIR" in message
        assert stat.S_IMODE(closed.stat().st_mode) == 0o700
        assert not (closed / "data").exists()
    finally:
        shutil.rmtree(closed)


# -- sharing and stopping ------------------------------------------------------------------------


async def test_a_second_start_shares_the_cluster_and_its_stop_leaves_it_running(
    cluster: EmbeddedPostgres,
) -> None:
    pid = cluster.running_pid()
    second = EmbeddedPostgres(cluster.data_dir)
    assert second.start() == cluster.url
    assert second.running_pid() == pid

    assert second.stop() is False  # the first user still holds its share

    assert cluster.running_pid() == pid
    conn = await asyncpg.connect(cluster.admin_url())
    try:
        assert await conn.fetchval("SELECT 1") == 1
    finally:
        await conn.close()


def test_a_stop_while_another_process_uses_the_cluster_leaves_it_running(
    cluster: EmbeddedPostgres,
) -> None:
    user = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path; from service.db.embedded import EmbeddedPostgres;"
            f" c = EmbeddedPostgres(Path({str(cluster.data_dir)!r})); c.start(); print('joined', flush=True);"
            " sys.stdin.read(); print(c.stop(), flush=True)",
        ],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert user.stdin is not None and user.stdout is not None
    try:
        assert user.stdout.readline().strip() == "joined"
        pid = cluster.running_pid()
        assert cluster.stop() is False  # the other process holds its share
        assert cluster.running_pid() == pid
    finally:
        user.stdin.close()
        assert user.stdout.read().strip() == "True"  # the last user stops the server
        user.wait(timeout=60)
    assert cluster.running_pid() is None
    cluster.start()
    assert cluster.running_pid() is not None


# -- the pid file --------------------------------------------------------------------------------


def dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


@pytest.mark.parametrize("kind", ["garbled", "stale"])
async def test_a_stale_or_garbled_pid_file_is_handled(cluster: EmbeddedPostgres, kind: str) -> None:
    assert cluster.stop() is True
    pidfile = cluster.pgdata / "postmaster.pid"
    if kind == "garbled":
        pidfile.write_text("not a pid\n\x00\x00")
    else:
        pidfile.write_text(f"{dead_pid()}\n{cluster.pgdata}\n1700000000\n{cluster.port}\n\n127.0.0.1\n")

    assert cluster.running_pid() is None

    cluster.start()
    assert cluster.running_pid() is not None
    conn = await asyncpg.connect(cluster.admin_url())
    try:
        assert await conn.fetchval("SELECT 1") == 1
    finally:
        await conn.close()


# -- clusters made by earlier versions -----------------------------------------------------------


async def test_a_cluster_made_with_trust_is_closed_on_its_next_start() -> None:
    base = reachable_tempdir("telemetry-legacy-")
    legacy = base / "postgres"
    pgdata = legacy / "pgdata"
    bindir = find_bindir()
    try:
        legacy.mkdir(mode=0o700)
        if IS_ROOT:
            os.chown(legacy, server_uid(), -1)
        made = as_server_account(str(bindir / "initdb"), "-D", str(pgdata), "-U", "postgres", "--auth=trust")
        assert made.returncode == 0, made.stderr
        port = free_port()
        opts = f"-c port={port} -c listen_addresses=127.0.0.1 -c unix_socket_directories=''"
        ctl = [str(bindir / "pg_ctl"), "-D", str(pgdata), "-l", str(pgdata / "server.log")]
        started = as_server_account(*ctl, "-o", opts, "-w", "start")
        assert started.returncode == 0, started.stderr

        # Running with trust: refused with what to do, and left as it was.
        with pytest.raises(EmbeddedPostgresError, match=r"trust authentication.*stop it"):
            EmbeddedPostgres(legacy).start()
        assert not (legacy / "password").exists()

        assert as_server_account(*ctl, "-w", "stop").returncode == 0
        cluster = EmbeddedPostgres(legacy, port=port)
        cluster.start()
        try:
            assert not has_trust_line((pgdata / "pg_hba.conf").read_text())
            assert stat.S_IMODE((legacy / "password").stat().st_mode) == 0o600
            with pytest.raises(asyncpg.InvalidPasswordError):
                await asyncpg.connect(without_password(cluster, None))
            conn = await asyncpg.connect(cluster.url)
            try:
                assert await conn.fetchval("SELECT current_database()") == "telemetry"
            finally:
                await conn.close()
            # Deleting the password file of a stopped cluster sets a new password on next start.
            first = cluster.url
            assert cluster.stop() is True
            (legacy / "password").unlink()
            cluster.start()
            assert cluster.url != first
            with pytest.raises(asyncpg.InvalidPasswordError):
                await asyncpg.connect(first)
            conn = await asyncpg.connect(cluster.url)
            await conn.close()
        finally:
            assert cluster.stop() is True
    finally:
        shutil.rmtree(base, ignore_errors=True)


# -- TimescaleDB's background workers ------------------------------------------------------------

# Project jobs (TimescaleDB numbers its own below 1000) without a finished background run yet.
_JOBS_NOT_RUN = """
SELECT count(*) FROM timescaledb_information.jobs j
LEFT JOIN timescaledb_information.job_stats s ON s.job_id = j.job_id
WHERE j.job_id >= 1000 AND (s.last_run_status IS NULL OR s.job_status = 'Running')
"""


async def _first_background_runs(url: str, deadline: float) -> tuple[WorkerSettings | None, list[str]]:
    """Once every project job has finished a background run: the server's worker settings and
    the errors of the runs that failed."""
    conn = await asyncpg.connect(url)
    try:
        while await conn.fetchval(_JOBS_NOT_RUN):
            assert time.monotonic() < deadline, "a job never ran in the background"
            await asyncio.sleep(0.3)
        errors = await conn.fetch(
            "SELECT err_message FROM timescaledb_information.job_errors WHERE job_id >= 1000"
        )
        return await read_worker_settings(conn), [r["err_message"] for r in errors]
    finally:
        await conn.close()


def test_a_fresh_embedded_start_with_timescaledb_starts_every_job_and_reports_ok(mode: StorageMode) -> None:
    """PostgreSQL's default 8 worker slots are fewer than TimescaleDB's 16 background workers:
    of the jobs due at the first start one "failed to start", and /health said degraded."""
    if mode != "timescale":
        pytest.skip("timescale only: postgres mode has no background jobs")
    base = reachable_tempdir("telemetry-fresh-")
    env = child_env()
    env |= {
        "TELEMETRY_DATA_DIR": str(base),
        "TELEMETRY_STORAGE_MODE": "timescale",
        "TELEMETRY_MAINTENANCE_INTERVAL_SECONDS": "1",
    }
    server = ServeProcess(env, cwd=ROOT)
    try:
        deadline = time.monotonic() + 120
        # A maintenance round has run once the per-table metrics exist.
        while 'telemetry_retention_oldest_row_age_seconds{table="device_heartbeats"}' not in (
            server.get("/metrics") or ""
        ):
            assert time.monotonic() < deadline and server.alive(), server.output
            time.sleep(0.3)
        cluster = EmbeddedPostgres(base / "postgres")
        assert cluster.running_pid() is not None
        workers, errors = asyncio.run(_first_background_runs(cluster.url, deadline))
        assert errors == []
        assert workers is not None and workers.problems() == [] and workers.warnings() == [], workers
        time.sleep(2.5)  # a maintenance round after every job's first run (one per second)
        health = server.get_json("/health") or {}
        assert health["storage_mode"] == "timescale", health
        assert (health["status"], health["problems"]) == ("ok", []), health
    finally:
        server.stop()
        EmbeddedPostgres(base / "postgres").stop("immediate")
        shutil.rmtree(base, ignore_errors=True)
