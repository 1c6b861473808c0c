#!/usr/bin/env bash
# The pending GPU measurements of issue 4, in one device call (device time is scarce: one start).
#
#   device run, carry [".whl"], command: bash bench/engine/gpu_session.sh
#
# .whl holds the wheels the GPU machine lacks (opentelemetry api/sdk/semconv, liger-kernel); see
# /work/.library/device/README.md for how they were fetched. Results land in $OUT (8 files at most).
set -uo pipefail
OUT=${OUT:-bench/results}
commit=${COMMIT:-unknown}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:common/src:model_format/src:engine/src:services/worker/src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
# 1. Correctness at real shapes and bf16 (overlap on and off must give the same greedy tokens).
python3 bench/kernels/gpu_kernel_check.py --out "$OUT" 2>&1 | tee "$OUT/gpu_kernel_check.log" | tail -5
# 2. End to end: overlap on/off against the plain CUDA-graph decoder and HF generate.
python3 bench/engine/gpu_engine_bench.py --out "$OUT" 2>&1 | tail -25
# 3. Where a decode step's GPU time goes now.
python3 bench/engine/decode_step_profile.py --out "$OUT" --commit "$commit" 2>&1 | tail -20
