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

# FunSearch evaluates untrusted candidate code inside bubblewrap (no network, read-only filesystem);
# without it the sandbox falls back to weaker isolation, so a failed install is not fatal.
if ! command -v bwrap >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ]; then
    echo "[setup] installing bubblewrap for the FunSearch sandbox"
    { DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends bubblewrap >/dev/null; } ||
        echo "[setup] could not install bubblewrap: the FunSearch sandbox will use weaker isolation"
fi

# The test suite runs a real single-node SLURM cluster and a real sshd:
# `setup.sh --with-test-services` installs them (Debian's slurm-wlm, munge, openssh-server), and
# Debian's chromium for the browser tests.
if [ "${1:-}" = "--with-test-services" ]; then
    missing=""
    command -v slurmctld >/dev/null 2>&1 || missing="$missing slurm-wlm munge"
    [ -x /usr/sbin/sshd ] || command -v sshd >/dev/null 2>&1 || missing="$missing openssh-server"
    # The browser tests drive Debian's chromium through Playwright (no browser download).
    [ -x /usr/bin/chromium ] || missing="$missing chromium"
    # The FunSearch sandbox tests check bubblewrap's isolation (they skip those checks without it).
    command -v bwrap >/dev/null 2>&1 || missing="$missing bubblewrap"
    if [ -n "$missing" ]; then
        if [ "$(id -u)" -eq 0 ]; then
            echo "[setup] installing$missing for the launcher, tunnel and browser tests"
            # Not fatal: without them those tests skip, saying why.
            # shellcheck disable=SC2086
            { DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
              DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null; } ||
                echo "[setup] could not install$missing: the SLURM/sshd/browser tests will be skipped"
        else
            echo "[setup] not root: the SLURM, sshd and browser tests will be skipped (they need:$missing)"
        fi
    fi
fi

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    echo "[setup] creating .venv"
    "$PYTHON" -m venv .venv
fi
# [ml]: torch (CPU wheel) and transformers, for the FunSearch transformers-sampler tests (~30 s).
# pip's build backend is chatty about editable installs: keep its output unless something fails.
log=.venv/pip-install.log
if ! { .venv/bin/python -m pip install -q --disable-pip-version-check --no-input --upgrade pip "setuptools>=70" wheel &&
       .venv/bin/python -m pip install -q --disable-pip-version-check --no-input -e '.[test,ml]'; } >"$log" 2>&1; then
    cat "$log"
    echo "[setup] pip install failed (log above, also in $log)" >&2
    exit 1
fi
echo "[setup] ready"
