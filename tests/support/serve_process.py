"""`telemetry serve` as a child process, the way an operator starts it: its output collected
from the start (a failure shows what the service said), plain HTTP reads of its endpoints, and
a SIGTERM stop that waits for the exit."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from service.db.embedded import free_port


class ServeProcess:
    """`python -m service serve --port <free port> [args]` with `env`, started at construction."""

    def __init__(self, env: dict[str, str], *args: str, cwd: Path | None = None) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service", "serve", "--port", str(self.port), *args],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stdout or []), daemon=True)
        self._reader.start()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def get(self, path: str) -> str | None:
        """The body of `GET path` (also of an HTTP error answer); None while nothing listens."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as response:
                return response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.read().decode()
        except OSError:
            return None

    def get_json(self, path: str) -> Any:
        body = self.get(path)
        return None if body is None else json.loads(body)

    def wait_for_line(self, text: str, within: float) -> None:
        """Until the service has printed a line holding `text`; fails (with its output) if it
        exits or `within` seconds pass first."""
        deadline = time.monotonic() + within
        while not any(text in line for line in self.lines):
            assert time.monotonic() < deadline and self.alive(), self.output
            time.sleep(0.1)

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, then the exit code once its output is read to the end (SIGKILL after
        `timeout`, answered as -9)."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._reader.join(timeout=5)
        return code


@contextlib.contextmanager
def serving(env: dict[str, str], *args: str) -> Iterator[int]:
    """`telemetry serve` with `env` (plus `args`) from the moment it says it is listening until
    SIGTERM on exit; yields the port."""
    server = ServeProcess(env, *args)
    try:
        server.wait_for_line("telemetry listening on", within=60)
        yield server.port
    finally:
        server.stop()
