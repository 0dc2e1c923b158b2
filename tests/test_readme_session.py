"""README's curl session, run as written against `telemetry serve` with its embedded PostgreSQL.

Only two things change: the port (a free one instead of 8080, so a running instance does not
interfere) and the first line, `./scripts/serve &`, which this test replaces by starting the
same server itself (the set-up part of scripts/serve has already run: we are inside its venv).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.db.embedded import EmbeddedPostgres
from tests.support.cli import run_bash
from tests.support.serve_process import ServeProcess

ROOT = Path(__file__).resolve().parent.parent


def readme_session() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## A session with curl", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "README has no bash block under 'A session with curl'"
    return block.group(1).splitlines()


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """TELEMETRY_DATA_DIR for the session, in a directory the server's account can enter: when
    we are root the embedded cluster runs as `postgres`, which cannot enter pytest's 0700
    tmp_path (and the cluster refuses rather than chmod a directory outside its own)."""
    base = Path(tempfile.mkdtemp(prefix="telemetry-readme-"))
    base.chmod(0o711)
    yield base / "data"
    shutil.rmtree(base, ignore_errors=True)


def test_readme_curl_session_works_as_written(data_dir: Path) -> None:
    lines = readme_session()
    assert lines[0].startswith("./scripts/serve &")
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env |= {
        "TELEMETRY_DATA_DIR": str(data_dir),
        "PATH": f"{Path(sys.executable).parent}:{env['PATH']}",
    }
    server = ServeProcess(env, cwd=ROOT)
    script = "\n".join(lines[1:]).replace("localhost:8080", f"localhost:{server.port}")
    assert f"localhost:{server.port}/v1/heartbeats" in script
    try:
        server.wait_for_line("telemetry listening on", within=120)
        session = run_bash(script, env, timeout=60, cwd=ROOT)
        assert session.returncode == 0, session.stderr
        # One JSON document per curl: heartbeat, read-back, the offline devices (none: phone-1
        # has just beaten) and the fleet summary, then the command and the rollout.
        decoder = json.JSONDecoder()
        documents, end = [], 0
        while end < len(session.stdout.rstrip()):
            document, end = decoder.raw_decode(session.stdout, end)
            documents.append(document)
            end += len(session.stdout[end:]) - len(session.stdout[end:].lstrip())
        posted, listed, offline, summary, dispatched, pulled, acked, command, build, _, installed, rollout = (
            documents
        )
        assert posted["device_id"] == "phone-1" and posted["results"][0]["stored"] is True
        assert [h["battery_pct"] for h in listed["heartbeats"]] == [87]
        assert listed["heartbeats"][0]["status"] == "ok"
        assert offline == {"devices": [], "next_cursor": None}
        assert summary["total"] == 1 and summary["presence"]["online"] == 1
        assert summary["battery"][">=50"] == 1
        assert dispatched["request_id"] == "lock-1" and dispatched["status"] == "pending"
        assert [c["request_id"] for c in pulled["commands"]] == ["lock-1"]
        assert acked["changed"] is True and acked["command"]["status"] == "executed"
        assert command["status"] == "executed" and command["result"] == {"locked": True}
        assert command["delivered_at"] is not None and command["executed_at"] is not None
        assert build["build_id"] == "ci-1234" and installed["status"] == "installed"
        assert rollout["downloads"]["completed"] == 1 and rollout["installations"]["installed"] == 1
    finally:
        code = server.stop()
        EmbeddedPostgres(data_dir / "postgres").stop("immediate")
    assert code == 0, server.output
    assert "stopped" in server.output.split("telemetry listening on", 1)[1]


@pytest.fixture(autouse=True)
def _needs_curl() -> None:
    if subprocess.run(["which", "curl"], capture_output=True).returncode != 0:
        pytest.fail("curl is needed by README's session (apt-get install curl)")
