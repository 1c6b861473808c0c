#!/usr/bin/env bash
# The real SmolLM2-135M-Instruct on the GPU machine, then every bench that needs it, in back-to-back
# device calls (the machine is given back ~30 s after a call ends, and one call carries at most 64 MiB).
#
# Here, once: bash ../shared/tools/gpu_model_parts.sh   (writes .gpu_model/, excluded from git)
#
# Call 1 (carry [".gpu_model/part_00", ".gpu_model/sha256", ".gpu_model/whl", ".gpu_model/gpu_model_parts.sh"]):
#   bash bench/engine/gpu_real_session.sh stash
# Call 2, at once (carry [".gpu_model/part_01"]):
#   bash bench/engine/gpu_real_session.sh check
#     joins and verifies the GGUF, converts it to /tmp/smollm2-real (float32 safetensors) and runs
#     bench/engine/gpu_real_model_check.py (issue 14.3) into $OUT.
# Call 3, at once, optional (carry ["bench/scratch/gpu_serving"]):
#   bash bench/engine/gpu_real_session.sh serve
#     the serving benchmark on the real weights (bench/engine/gpu_serving_session.sh with MODEL_DIR).
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
    export PYTHONPATH="/tmp/site:$PWD/common/src:$PWD/model_format/src:$PWD/engine/src:$PWD/services/worker/src" PYTHONUNBUFFERED=1
    # The generated stubs are not needed here: the check imports no service code.
    python3 bench/engine/gpu_real_model_check.py --gguf /tmp/gpu_model/SmolLM2-135M-Instruct.Q4_1.gguf \
      --model-dir "$model_dir" --out "$OUT" 2>&1 | grep -v 'Loading weights' | tail -30
    ;;
  anatomy)
    # Call 2's alternative, or call 3: where a real-weight decode step goes, next to random weights on
    # the same machine (bench/engine/engine_step_anatomy.py; a cold first batch shows what no warm-up costs).
    if [ ! -f "$model_dir/model.safetensors" ]; then
      [ -f .gpu_model/part_01 ] && cp .gpu_model/part_01 /tmp/gpu_model/
      bash /tmp/gpu_model/gpu_model_parts.sh --join /tmp/gpu_model
      PYTHONPATH="/tmp/site:$PWD/common/src:$PWD/model_format/src:$PWD/engine/src:$PWD/services/worker/src" python3 -c \
        "from pathlib import Path; from radixfair_model_format.model_store import convert_gguf; \
convert_gguf(Path('/tmp/gpu_model/SmolLM2-135M-Instruct.Q4_1.gguf'), Path('$model_dir'))"
    fi
    export PYTHONPATH="/tmp/site:$PWD/common/src:$PWD/model_format/src:$PWD/engine/src:$PWD/services/worker/src" PYTHONUNBUFFERED=1
    python3 bench/engine/engine_step_anatomy.py --batches 1 32 128 --cold-first --model-dir "$model_dir" \
      --label real --out-name engine_step_anatomy_real_h200
    python3 bench/engine/engine_step_anatomy.py --batches 1 32 128 --cold-first --label random \
      --out-name engine_step_anatomy_random_h200
    mkdir -p "$OUT" && cp bench/results/engine_step_anatomy_re*_h200.* "$OUT"/ 2>/dev/null || true
    ;;
  serve)
    [ -f "$model_dir/model.safetensors" ] || { echo "no $model_dir: the machine was given back; start again" >&2; exit 3; }
    MODEL_DIR=$model_dir TAG=${TAG:-gpu_h200_real} CONCURRENCY=${CONCURRENCY:-1 128 256} \
      bash bench/engine/gpu_serving_session.sh
    ;;
  *)
    echo "usage: $0 stash|check|anatomy|serve (see the header)" >&2
    exit 2
    ;;
esac
