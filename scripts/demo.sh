#!/usr/bin/env bash
# Quick start 1/2: set up, then run the demo workflow on the embedded database.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python run.py "${1:-demo-$(date +%Y%m%d-%H%M%S)}" "${2:-cfgs/local.yaml}" --fifo-baseline
