#!/usr/bin/env bash
# Creates .venv and installs every radixfair package plus test tools into it.
# Idempotent: a second run only checks that everything is in place.
# The install commands themselves live in scripts/install_service.sh, which
# the Dockerfiles under deploy/docker/ run too.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
VPY="$ROOT/.venv/bin/python"
STAMP=.venv/.radixfair-installed
HASH="$(cat constraints.txt requirements-dev.txt scripts/install_service.sh common/pyproject.toml common/setup.py model_format/pyproject.toml engine/pyproject.toml services/*/pyproject.toml $(find protos -name '*.proto' | sort) | sha256sum | cut -d' ' -f1)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$HASH" ]; then
  # A system tool outside .venv: checked on every run, installed only when missing.
  PYTHON="$VPY" bash scripts/install_service.sh docker-compose
  exit 0
fi
"$VPY" -m pip install -q --upgrade pip
PYTHON="$VPY" bash scripts/install_service.sh --editable dev
echo "$HASH" > "$STAMP"
