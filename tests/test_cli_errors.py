"""Every command group meets every failure a user can cause with one stderr line and an exit code.

A table: each failure (a way to get the configuration or the database wrong) is run against
every command it applies to, each in its own process as a user would run it. Each answer is
one line naming the problem, prefixed with the command group, with exit code 2 for usage and
configuration and 1 for everything else; no traceback, and the URL's password never shown.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory

from service.cli_errors import url_password
from service.db.embedded import EmbeddedPostgres, free_port
from tests.support.cli import child_env, run_telemetry
from tests.support.cluster import TestServer, create_database, migrate

PASSWORD = "Tr0ub4dor-and-3"
PREVIOUS = "aadd574780ab"  # behind head

COMMANDS: dict[str, list[str]] = {
    "serve": ["serve", "--port", "0"],
    "migrate current": ["migrate", "current"],
    "migrate upgrade": ["migrate", "upgrade"],
    "migrate downgrade": ["migrate", "downgrade", "--yes"],
    "migrate check": ["migrate", "check"],
    "migrate stamp": ["migrate", "stamp", "head"],
    "migrate deploy": ["migrate", "deploy", "--health-url", "http://127.0.0.1:9/health", "--timeout", "1s"],
    "retention show": ["retention", "show"],
    "retention set": ["retention", "set", "device_heartbeats", "36h"],
    "retention run": ["retention", "run", "--dry-run"],
    "admin create-operator": ["admin", "create-operator", "bob"],
    "admin create-enrollment-token": ["admin", "create-enrollment-token"],
}
# Commands that need the schema at head (the others migrate it, or report where it is).
NEED_HEAD = [c for c in COMMANDS if c.split()[0] in ("retention", "admin")]


@dataclass
class Failure:
    env: dict[str, str]
    code: int
    names: str  # what the one line must say
    commands: list[str] = field(default_factory=lambda: list(COMMANDS))


def _url(server: TestServer, *, user: str, database: str, password: str | None = None) -> str:
    """A URL on the session cluster; the superuser's real password for `postgres` (the embedded
    cluster takes no password-less connection), PASSWORD for every other role."""
    if password is None:
        password = url_password(server.admin_url) if user == "postgres" else PASSWORD
    base = server.admin_url.split("@", 1)[1].rsplit("/", 1)[0]
    return f"postgresql://{user}:{password}@{base}/{database}"


@pytest.fixture(scope="module")
def blackhole() -> Iterator[int]:
    """A port that accepts TCP connections and never answers: a database that times out."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


@pytest.fixture(scope="module")
def password_role(pg_server: TestServer) -> Iterator[str]:
    """A role that must give its password (scram), on the session cluster."""
    if pg_server.cluster is None:
        pytest.skip("needs the suite's own cluster (TEST_DATABASE_URL is set)")
    hba = pg_server.cluster.pgdata / "pg_hba.conf"
    original = hba.read_text()
    # Under scram-sha-256 the server answers an unknown role like a wrong password (it does not
    # confirm which roles exist); for this one role that exists nowhere it says so, as a server
    # with other authentication would, so the CLI's "unknown role" line is exercised too.
    hba.write_text(
        f"host all pw_role 127.0.0.1/32 scram-sha-256\nhost all nobody_here 127.0.0.1/32 trust\n{original}"
    )

    async def setup() -> None:
        conn = await asyncpg.connect(pg_server.admin_url)
        try:
            await conn.execute("DROP ROLE IF EXISTS pw_role")
            await conn.execute("CREATE ROLE pw_role LOGIN PASSWORD 'the-right-one'")
            await conn.execute("SELECT pg_reload_conf()")
        finally:
            await conn.close()

    asyncio.run(setup())
    try:
        yield "pw_role"
    finally:
        hba.write_text(original)


async def _behind_head(server: TestServer) -> str:
    url = await create_database(server)
    await migrate(url, "postgres", PREVIOUS)
    return url


async def _limited_role(server: TestServer, database_url: str) -> None:
    """`limited` may connect but owns nothing and has no CREATE on the schema."""
    conn = await asyncpg.connect(server.admin_url)
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = 'limited'"):
            await conn.execute("CREATE ROLE limited LOGIN")
        await conn.execute(f"ALTER ROLE limited PASSWORD '{PASSWORD}'")
    finally:
        await conn.close()
    db = await asyncpg.connect(database_url)
    try:
        await db.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    finally:
        await db.close()


@pytest.fixture(scope="module")
def failures(
    pg_server: TestServer,
    plain_cluster: EmbeddedPostgres,
    blackhole: int,
    password_role: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Failure]:
    behind = asyncio.run(_behind_head(pg_server))
    behind_db = behind.rsplit("/", 1)[1]
    asyncio.run(_limited_role(pg_server, behind))
    # Under /tmp and enterable, so that the postgres user could reach it if it were writable.
    blocked = Path(tempfile.mkdtemp(prefix="telemetry-blocked-"))
    blocked.chmod(0o711)
    if os.geteuid() == 0:
        # root writes anywhere: a file where a directory must be is what stops it.
        (blocked / "file").write_text("")
        data_dir = blocked / "file" / "data"
    else:
        blocked.chmod(0o500)
        data_dir = blocked / "data"
    closed = free_port()
    plain = plain_cluster.url
    return {
        "refused": Failure(
            {"DATABASE_URL": f"postgresql://app:{PASSWORD}@127.0.0.1:{closed}/telemetry"}, 1, "unreachable"
        ),
        "dns": Failure(
            {"DATABASE_URL": f"postgresql://app:{PASSWORD}@db.invalid/telemetry"}, 1, "host not found"
        ),
        "timeout": Failure(
            {
                "DATABASE_URL": f"postgresql://app:{PASSWORD}@127.0.0.1:{blackhole}/telemetry",
                "TELEMETRY_DB_CONNECT_TIMEOUT_SECONDS": "1",
            },
            1,
            "did not answer in time",
        ),
        "wrong password": Failure(
            {"DATABASE_URL": _url(pg_server, user=password_role, database="postgres")},
            2,
            "password authentication failed",
        ),
        "unknown database": Failure(
            {"DATABASE_URL": _url(pg_server, user="postgres", database="no_such_db")},
            2,
            'database "no_such_db" does not exist',
        ),
        "unknown role": Failure(
            {"DATABASE_URL": _url(pg_server, user="nobody_here", database="postgres")},
            2,
            'role "nobody_here" does not exist',
        ),
        "malformed URL": Failure(
            {"DATABASE_URL": f"postgresql://app:{PASSWORD}@127.0.0.1:notaport/telemetry"},
            2,
            "not a PostgreSQL URL",
        ),
        "timescale missing": Failure(
            {"DATABASE_URL": plain, "TELEMETRY_STORAGE_MODE": "timescale"}, 2, "TimescaleDB cannot be used"
        ),
        "permission denied": Failure(
            {"DATABASE_URL": _url(pg_server, user="limited", database=behind_db)}, 1, "permission denied"
        ),
        "schema behind head": Failure(
            {"DATABASE_URL": _url(pg_server, user="postgres", database=behind_db)},
            1,
            "run `telemetry migrate upgrade` first",
            commands=NEED_HEAD,
        ),
        "data directory not writable": Failure(
            {"TELEMETRY_DATA_DIR": str(data_dir)}, 1, f"cannot write {data_dir}"
        ),
    }


def _run(argv: list[str], extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return run_telemetry(argv, child_env(TELEMETRY_DB_WAIT_SECONDS="0", **extra), timeout=90)


@pytest.mark.parametrize(
    "failure",
    [
        "refused",
        "dns",
        "timeout",
        "wrong password",
        "unknown database",
        "unknown role",
        "malformed URL",
        "timescale missing",
        "permission denied",
        "schema behind head",
        "data directory not writable",
    ],
)
def test_every_command_answers_a_failure_with_one_line(failures: dict[str, Failure], failure: str) -> None:
    case = failures[failure]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = dict(
            zip(case.commands, pool.map(lambda c: _run(COMMANDS[c], case.env), case.commands), strict=True)
        )
    wrong: list[str] = []
    for command, result in results.items():
        group = command.split()[0]
        lines = result.stderr.splitlines()
        problems = []
        if result.returncode != case.code:
            problems.append(f"exit {result.returncode}, expected {case.code}")
        if len(lines) != 1:
            problems.append(f"{len(lines)} stderr lines")
        elif not lines[0].startswith(f"telemetry {group}: ") or case.names not in lines[0]:
            problems.append("line does not name the problem")
        if "Traceback" in result.stderr + result.stdout:
            problems.append("traceback")
        secret = url_password(case.env.get("DATABASE_URL"))
        for password in {PASSWORD, secret} - {None}:
            if password in result.stderr + result.stdout:
                problems.append("password shown")
        if problems:
            wrong.append(f"{command}: {', '.join(problems)}:\n{result.stderr}{result.stdout}")
    assert not wrong, "\n".join(wrong)


def test_a_traceback_only_with_debug_logging(failures: dict[str, Failure]) -> None:
    env = failures["refused"].env | {"TELEMETRY_LOG_LEVEL": "DEBUG"}
    result = _run(COMMANDS["migrate current"], env)
    assert result.returncode == 1
    assert "Traceback" in result.stderr
    assert result.stderr.splitlines()[-1].startswith("telemetry migrate: database at")
    assert PASSWORD not in result.stderr


def test_migrate_options_are_accepted_after_the_verb() -> None:
    after = _run(["migrate", "upgrade", "--sql", "--mode", "timescale"], {"TELEMETRY_LOG_LEVEL": "WARNING"})
    before = _run(["migrate", "--mode", "timescale", "upgrade", "--sql"], {"TELEMETRY_LOG_LEVEL": "WARNING"})
    assert after.returncode == 0, after.stderr
    assert "create_hypertable" in after.stdout
    assert after.stdout == before.stdout


def test_version_names_the_package_and_the_schema_head() -> None:
    from importlib.metadata import version

    result = _run(["--version"], {})
    assert result.returncode == 0, result.stderr
    head = ScriptDirectory.from_config(Config("alembic.ini")).get_current_head()
    assert result.stdout.strip() == f"telemetry {version('device-telemetry')}, schema head {head}"


@pytest.fixture(autouse=True)
def _project_root() -> Iterator[None]:
    cwd = os.getcwd()
    os.chdir(Path(__file__).resolve().parent.parent)
    try:
        yield
    finally:
        os.chdir(cwd)
