#!/usr/bin/env bash
# Sets up everything (idempotent) and runs the whole test suite.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup_env.sh
.venv/bin/ruff check .
# The slowest tests, in every CI log: where the suite's time budget goes.
.venv/bin/python -m pytest --durations=25 "$@"
