#!/usr/bin/env bash
# Quick start 2/2: set up, lint, then run the test suite against a real private PostgreSQL.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --with-test-services
.venv/bin/ruff check .
.venv/bin/mypy eqflow workers service run.py
exec .venv/bin/python -m pytest "$@"
