#!/usr/bin/env bash
# Sets up everything (idempotent) and runs the main job.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup_env.sh
exec .venv/bin/python scripts/demo.py "$@"
