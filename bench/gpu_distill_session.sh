#!/usr/bin/env bash
# Issue 15 on the GPU machine in two back-to-back device calls (the teacher's GGUF travels in two
# parts, see ../shared/tools/gpu_model_parts.sh; the machine must still be warm for the second).
#
# Here, once: bash ../shared/tools/gpu_model_parts.sh   (writes .gpu_model/, ignored by git)
#             bash bench/gpu_distill_session.sh --prepare   (bench/scratch/gpu_distill/whl: opentelemetry)
# Call 1 (~2-3 min): part_00 to /tmp, then the int8 matmul bench.
#   run(command="bash bench/gpu_distill_session.sh 1",
#       carry=[".gpu_model/part_00", ".gpu_model/sha256", ".gpu_model/whl", ".gpu_model/gpu_model_parts.sh",
#              "bench/scratch/gpu_distill"], timeout_s=300)
# Call 2 at once (BUDGET_S seconds of distillation, default 470, plus ~30 s of start-up):
#   run(command="bash bench/gpu_distill_session.sh 2", carry=[".gpu_model/part_01", "bench/scratch/gpu_distill"],
#       timeout_s=600)
# Results in $OUT: gpu_int8_h200.{json,md} (call 1), distill_results_gpu.{json,md} and the log (call 2).
set -uo pipefail
carry=bench/scratch/gpu_distill
if [ "${1:-}" = "--prepare" ]; then
  mkdir -p "$carry/whl"
  py=${PYTHON:-.venv/bin/python}
  "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    -d "$carry/whl" opentelemetry-api==1.45.2 opentelemetry-sdk==1.45.2 \
    opentelemetry-semantic-conventions==0.66b2 importlib-metadata==10.2.0
  du -sh "$carry"
  exit 0
fi
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
  "$carry"/whl/*.whl || exit 1
export PYTHONPATH="/tmp/site:$PWD/common/src:$PWD/services/worker/src:$PWD/services/distiller/src"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
case "${1:-}" in
  1)
    mkdir -p /tmp/gpu_model && cp -r .gpu_model/. /tmp/gpu_model/
    timeout -s TERM 240 python3 bench/gpu_int8_bench.py --out "$OUT" 2>&1 | tee "$OUT/gpu_int8_bench.log"
    ;;
  2)
    cp .gpu_model/part_01 /tmp/gpu_model/ && bash /tmp/gpu_model/gpu_model_parts.sh --join /tmp/gpu_model || exit 3
    # The script keeps to its own budget; the timeout is a backstop that still leaves the page written
    # after the last finished phase.
    timeout -s TERM $(( ${BUDGET_S:-470} + 90 )) python3 bench/gpu_distill.py \
      --gguf /tmp/gpu_model/SmolLM2-135M-Instruct.Q4_1.gguf --budget-s "${BUDGET_S:-470}" --out "$OUT" \
      2>&1 | tee "$OUT/gpu_distill.log"
    ;;
  *) echo "usage: $0 --prepare | 1 | 2" >&2; exit 2 ;;
esac
ls -l "$OUT"
