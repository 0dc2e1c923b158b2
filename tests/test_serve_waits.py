"""`telemetry serve` started before its database waits for it, then becomes ready without a restart."""

from __future__ import annotations

import time

from service.db.embedded import EmbeddedPostgres, free_port
from tests.support.cli import child_env, run_telemetry
from tests.support.serve_process import ServeProcess


def test_serve_waits_for_a_database_that_starts_3s_later(plain_cluster: EmbeddedPostgres) -> None:
    url = plain_cluster.url
    plain_cluster.stop("fast")
    env = child_env()
    env |= {"DATABASE_URL": url, "TELEMETRY_DB_WAIT_SECONDS": "60", "TELEMETRY_STORAGE_MODE": "postgres"}
    server = ServeProcess(env)
    try:
        time.sleep(3)
        assert server.alive(), server.output
        assert server.get("/health") is None  # not listening, so not ready, while the database is down
        plain_cluster.start()
        deadline = time.monotonic() + 90
        health = server.get_json("/health")
        while not (health and health.get("ready")):
            assert time.monotonic() < deadline and server.alive(), server.output
            time.sleep(0.3)
            health = server.get_json("/health")
        assert health["schema"] == "head"
        assert health["database"] == "ok"
    finally:
        code = server.stop()
    log = server.output
    waiting = [line for line in log.splitlines() if "waiting for the database" in line]
    assert len(waiting) >= 2, log
    assert "is unreachable" in waiting[0] and "attempt 1" in waiting[0]
    assert "Traceback" not in log
    assert code == 0, log


def test_serve_gives_up_after_the_wait_with_one_line(plain_cluster: EmbeddedPostgres) -> None:
    env = child_env()
    env |= {
        "DATABASE_URL": f"postgresql://app:pw-Secret-9@127.0.0.1:{free_port()}/x",
        "TELEMETRY_DB_WAIT_SECONDS": "2",
    }
    started = time.monotonic()
    result = run_telemetry(["serve", "--port", "0"], env, timeout=60)
    assert time.monotonic() - started >= 2
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert all("waiting for the database" in line for line in lines[:-1]) and len(lines) >= 3
    assert lines[-1].startswith("telemetry serve: database at postgresql://app:***@127.0.0.1:")
    assert "pw-Secret-9" not in result.stderr
