#!/usr/bin/env bash
# The real SmolLM2-135M-Instruct on the GPU machine, then every bench that needs it, in back-to-back
# device calls (the machine is given back ~30 s after a call ends, and one call carries at most 64 MiB).
#
# Here, once: bash ../shared/tools/gpu_model_parts.sh   (writes .gpu_model/, excluded from git)
#
# Call 1 (carry [".gpu_model/part_00", ".gpu_model/sha256", ".gpu_model/whl", ".gpu_model/gpu_model_parts.sh"]):
#   bash bench/gpu_real_session.sh stash
# Call 2, at once (carry [".gpu_model/part_01"]):
#   bash bench/gpu_real_session.sh check
#     joins and verifies the GGUF, converts it to /tmp/smollm2-real (float32 safetensors) and runs
#     bench/gpu_real_model_check.py (issue 14.3) into $OUT.
# Call 3, at once, optional (carry ["bench/scratch/gpu_serving"]):
#   bash bench/gpu_real_session.sh serve
#     the serving benchmark on the real weights (bench/gpu_serving_session.sh with MODEL_DIR).
# A call that finds /tmp/gpu_model or /tmp/smollm2-real missing says so: the machine was given back
# in between, start again from call 1.
set -euo pipefail
OUT=${OUT:-bench/results}
model_dir=/tmp/smollm2-real
case "${1:-}" in
  stash)
    mkdir -p /tmp/gpu_model && cp -r .gpu_model/. /tmp/gpu_model/
    ls -l /tmp/gpu_model
    ;;
  check)
    cp .gpu_model/part_01 /tmp/gpu_model/
    bash /tmp/gpu_model/gpu_model_parts.sh --join /tmp/gpu_model
    export PYTHONPATH="/tmp/site:$PWD/common/src:$PWD/services/worker/src" PYTHONUNBUFFERED=1
    # The generated stubs are not needed here: the check imports no service code.
    python3 bench/gpu_real_model_check.py --gguf /tmp/gpu_model/SmolLM2-135M-Instruct.Q4_1.gguf \
      --model-dir "$model_dir" --out "$OUT" 2>&1 | grep -v 'Loading weights' | tail -30
    ;;
  serve)
    [ -f "$model_dir/model.safetensors" ] || { echo "no $model_dir: the machine was given back; start again" >&2; exit 3; }
    MODEL_DIR=$model_dir TAG=${TAG:-gpu_h200_real} CONCURRENCY=${CONCURRENCY:-1 128 256} \
      bash bench/gpu_serving_session.sh
    ;;
  *)
    echo "usage: $0 stash|check|serve (see the header)" >&2
    exit 2
    ;;
esac
