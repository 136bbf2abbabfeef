#!/usr/bin/env bash
# Installs what eqflow needs on a fresh machine: PostgreSQL server binaries (Debian packages)
# when initdb is missing, and a virtual environment in .venv with eqflow and its test tools.
set -euo pipefail
cd "$(dirname "$0")/.."

have_initdb() {
    [ -n "${EQFLOW_PG_BIN:-}" ] && [ -x "$EQFLOW_PG_BIN/initdb" ] && return 0
    command -v pg_config >/dev/null 2>&1 && [ -x "$(pg_config --bindir)/initdb" ] && return 0
    ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && return 0
    command -v initdb >/dev/null 2>&1
}

if ! have_initdb; then
    echo "[setup] PostgreSQL server not found: installing Debian's postgresql"
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    # The packaged cluster is not used: eqflow runs its own private one.
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null
fi

# The test suite runs a real single-node SLURM cluster: `setup.sh --with-slurm` installs it.
if [ "${1:-}" = "--with-slurm" ] && ! command -v slurmctld >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ]; then
        echo "[setup] installing slurm-wlm and munge for the SLURM launcher tests"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
    else
        echo "[setup] not root: SLURM tests will be skipped (apt-get install slurm-wlm munge to run them)"
    fi
fi

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    echo "[setup] creating .venv"
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check --no-input --upgrade pip "setuptools>=70" wheel
.venv/bin/python -m pip install -q --disable-pip-version-check --no-input -e '.[test]'
echo "[setup] ready"
