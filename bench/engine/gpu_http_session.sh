#!/usr/bin/env bash
# Issue 16's benchmark row on the GPU machine: HTTP streaming (the router's OpenAI-compatible API,
# server-sent events) against gRPC streaming through the same router, Redis and worker, at 128
# concurrent streams; random weights of the SmolLM2-135M shape, bf16, Triton kernels, as
# bench/engine/gpu_serving_session.sh runs the other serving rows.
#
# 1. Here, once, from the repository root (both fill bench/scratch/gpu_serving/, which git ignores):
#      bash bench/engine/gpu_serving_session.sh --prepare && bash bench/engine/gpu_http_session.sh --prepare
#    The second adds Python 3.12 wheels of the router's HTTP stack (starlette, uvicorn, httptools,
#    pydantic) and of the bench's HTTP client (httpx), with their dependencies, at this venv's versions.
# 2. The device call (the bench is cut at 470 s and writes its results after every cell):
#      run(command="bash bench/engine/gpu_http_session.sh", carry=["bench/scratch/gpu_serving"], timeout_s=600)
#    Results in $OUT: serving_<tag>.{json,md} (rows router and http; the derived table's
#    http_vs_grpc_tok_s and http_added_ttft_p50_ms), serving_bench.log, the router and worker logs.
# TAG=... names the results; CONCURRENCY="1 128" widens the sweep.
set -uo pipefail
carry=bench/scratch/gpu_serving
# The HTTP stack and its dependencies (for Python 3.12 on Linux).
HTTP_PACKAGES=(starlette uvicorn httptools pydantic pydantic-core annotated-types typing-inspection
  typing-extensions anyio idna click h11 httpx httpcore certifi)

if [ "${1:-}" = "--prepare" ]; then
  set -e
  [ -d "$carry/whl" ] || { echo "run 'bash bench/engine/gpu_serving_session.sh --prepare' first" >&2; exit 2; }
  py=${PYTHON:-.venv/bin/python}
  pinned=()
  for name in "${HTTP_PACKAGES[@]}"; do
    pinned+=("$name==$("$py" -c "from importlib.metadata import version; print(version('$name'))")")
  done
  "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$carry/whl" "${pinned[@]}"
  du -sh "$carry"
  exit 0
fi

# shellcheck source=bench/engine/gpu_env.sh
source bench/engine/gpu_env.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

tag=${TAG:-gpu_h200_http_vs_grpc}
logs=/tmp/serving_logs
# shellcheck disable=SC2086  # CONCURRENCY is a list of numbers
timeout -s TERM 470 python3 bench/engine/serving_bench.py --shape smollm2-135m --tokenizer-dir "$carry/tokenizer" \
  --device cuda --dtype bfloat16 --backend triton --paths router http \
  --concurrency ${CONCURRENCY:-128} --workloads unique shared_prefix \
  --min-requests 128 --warmup-requests 16 --client-procs 4 \
  --tag "$tag" --out-dir "$OUT" --logs-dir "$logs" 2>&1 | tee "$OUT/serving_bench.log" | grep -v '^{' | tail -40
for log in "$logs/worker-0.log" "$logs/stack/router.log"; do
  [ -f "$log" ] && tail -c 4000000 "$log" > "$OUT/$(basename "$(dirname "$log")")_$(basename "$log")"
done
ls -l "$OUT"
