"""`telemetry serve` started before its database waits for it, then becomes ready without a restart."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

from service.db.embedded import EmbeddedPostgres, free_port


def _health(port: int) -> dict[str, object] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return json.loads(exc.read())
    except OSError:
        return None


def test_serve_waits_for_a_database_that_starts_3s_later(plain_cluster: EmbeddedPostgres) -> None:
    url = plain_cluster.url
    plain_cluster.stop("fast")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TELEMETRY_")}
    env |= {"DATABASE_URL": url, "TELEMETRY_DB_WAIT_SECONDS": "60", "TELEMETRY_STORAGE_MODE": "postgres"}
    server = subprocess.Popen(
        [sys.executable, "-m", "service", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(server.stdout or []), daemon=True)
    reader.start()
    try:
        time.sleep(3)
        assert server.poll() is None, "".join(output)
        assert _health(port) is None  # not listening, so not ready, while the database is down
        plain_cluster.start()
        deadline = time.monotonic() + 90
        health = _health(port)
        while not (health and health.get("ready")):
            assert time.monotonic() < deadline, "".join(output)
            assert server.poll() is None, "".join(output)
            time.sleep(0.3)
            health = _health(port)
        assert health["schema"] == "head"
        assert health["database"] == "ok"
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
        reader.join(timeout=5)
    log = "".join(output)
    waiting = [line for line in log.splitlines() if "waiting for the database" in line]
    assert len(waiting) >= 2, log
    assert "is unreachable" in waiting[0] and "attempt 1" in waiting[0]
    assert "Traceback" not in log
    assert server.returncode == 0, log


def test_serve_gives_up_after_the_wait_with_one_line(plain_cluster: EmbeddedPostgres) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TELEMETRY_")}
    env |= {
        "DATABASE_URL": f"postgresql://app:pw-Secret-9@127.0.0.1:{free_port()}/x",
        "TELEMETRY_DB_WAIT_SECONDS": "2",
    }
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "service", "serve", "--port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert time.monotonic() - started >= 2
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert all("waiting for the database" in line for line in lines[:-1]) and len(lines) >= 3
    assert lines[-1].startswith("telemetry serve: database at postgresql://app:***@127.0.0.1:")
    assert "pw-Secret-9" not in result.stderr
