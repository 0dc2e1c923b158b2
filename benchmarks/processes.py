"""The processes under test, each started as its own OS process as in production: the service
(`python -m service serve`) and the trivial aiohttp app that gives the HTTP ceiling.

Each writes its stdout and stderr to log files; start-up waits for the "listening on" line
(bounded), and `stop()` sends SIGTERM, waits, and kills only if the process does not exit.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from service.db.embedded import free_port

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "benchmarks"


class ProcessError(RuntimeError):
    pass


@dataclass
class ListeningProcess:
    """A child process that prints `<something> listening on http://H:P` when ready."""

    name: str
    argv: list[str]
    log_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    ready_timeout: float = 180.0
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise ProcessError(f"{self.name} not started")
        return self.proc.pid

    def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        out_path = self.log_dir / f"{self.name}.stdout.log"
        err_path = self.log_dir / f"{self.name}.stderr.log"
        with out_path.open("wb") as out, err_path.open("wb") as err:
            self.proc = subprocess.Popen(
                [*self.argv, "--port", str(self.port)],
                cwd=ROOT,
                env={**os.environ, **self.env},
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if "listening on http://" in out_path.read_text(errors="replace"):
                return
            if self.proc.poll() is not None:
                raise ProcessError(
                    f"{self.name} exited with {self.proc.returncode} before listening:\n"
                    + err_path.read_text(errors="replace")[-3000:]
                )
            time.sleep(0.1)
        self.stop()
        raise ProcessError(f"{self.name} did not start listening within {self.ready_timeout:.0f} s")

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM, wait up to `timeout` seconds, then SIGKILL. Returns the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)


def service_process(
    database_url: str, mode: str, log_dir: Path, data_dir: Path, workers: int = 1
) -> ListeningProcess:
    """The service on `database_url`, forced to `mode`. Retention maintenance is pushed out of
    the run so that the expired history stays in place until the cleanup phase measures it."""
    return ListeningProcess(
        name=f"service-{mode}" + (f"-workers{workers}" if workers > 1 else ""),
        argv=[sys.executable, "-m", "service", "serve", "--host", "127.0.0.1", "--workers", str(workers)],
        log_dir=log_dir,
        env={
            "DATABASE_URL": database_url,
            "TELEMETRY_STORAGE_MODE": mode,
            "TELEMETRY_LOG_LEVEL": "WARNING",
            "TELEMETRY_MAINTENANCE_INTERVAL_SECONDS": "86400",
            "TELEMETRY_DATA_DIR": str(data_dir),
        },
    )


def ceiling_process(log_dir: Path) -> ListeningProcess:
    return ListeningProcess(
        name="ceiling",
        argv=[sys.executable, str(BENCH_DIR / "ceiling_app.py")],
        log_dir=log_dir,
        ready_timeout=30.0,
    )


def create_operator(database_url: str, name: str) -> str:
    """`python -m service admin create-operator NAME`: the token is its last stdout line."""
    result = subprocess.run(
        [sys.executable, "-m", "service", "admin", "create-operator", name],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=120,
    )
    if result.returncode != 0:
        raise ProcessError(f"create-operator failed: {result.stderr.strip()}")
    return result.stdout.strip().splitlines()[-1]
