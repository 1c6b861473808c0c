#!/usr/bin/env bash
# Issue 15 on one H200 (bench/gpu_distill.py), with the real teacher, in two back-to-back device calls
# (the teacher's GGUF travels in two parts, ../shared/tools/gpu_model_parts.sh; the machine must still
# be warm for the second call, which does everything else).
#
# Here, once:  bash ../shared/tools/gpu_model_parts.sh        (writes .gpu_model/, ignored by git)
#              bash bench/gpu_distill_session.sh --prepare    (bench/scratch/gpu_distill: wheels, tokenizer)
# Call 1 (seconds): part_00 of the GGUF to /tmp/gpu_model.
#   run(command="bash bench/gpu_distill_session.sh 1",
#       carry=[".gpu_model/part_00", ".gpu_model/sha256", ".gpu_model/whl", ".gpu_model/gpu_model_parts.sh"],
#       timeout_s=120)
# Call 2, at once (<= 9.5 min): joins the GGUF, converts it to /tmp/smollm2-real (the worker's model
# store), then the whole distillation inside BUDGET_S seconds (default: what is left of 555 s).
#   run(command="bash bench/gpu_distill_session.sh 2",
#       carry=[".gpu_model/part_01", "bench/scratch/gpu_distill"], timeout_s=600)
# From a snapshot directory inside the carried tree, the same: "cd .snap && bash bench/gpu_distill_session.sh 2"
# (carried paths are looked up here and one level up).
# If /tmp/smollm2-real already exists (bench/gpu_real_session.sh check made it), call 2 uses it; if
# neither it nor the GGUF parts are there, the run goes on with random weights and its page says so.
# Results in $OUT: distill_results_gpu.{json,md} (rewritten after every phase) and gpu_distill.log.
set -uo pipefail
# A carried path is found here or one level up (the lead may run from a snapshot directory, e.g.
# .snap/, inside the carried working tree).
carried() { for d in . ..; do [ -e "$d/$1" ] && { echo "$d/$1"; return; }; done; echo "$1"; }
carry=bench/scratch/gpu_distill
if [ "${1:-}" = "--prepare" ]; then
  mkdir -p "$carry/whl" "$carry/tokenizer"
  py=${PYTHON:-.venv/bin/python}
  "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    -d "$carry/whl" opentelemetry-api==1.45.2 opentelemetry-sdk==1.45.2 \
    opentelemetry-semantic-conventions==0.66b2 importlib-metadata==10.2.0
  # The tokenizer of the random stand-in teacher (used only when the real one is missing).
  model=$("$py" -c 'from pathlib import Path; from radixfair_worker.model_store import PACKAGED_MODEL, resolve_model_dir as r; print(r(PACKAGED_MODEL, Path("~/.cache/radixfair/models").expanduser()))')
  cp "$model"/tokenizer.json "$model"/tokenizer_config.json "$model"/chat_template.jinja "$carry/tokenizer/"
  du -sh "$carry"
  exit 0
fi
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
real=/tmp/smollm2-real
carry=$(carried "$carry")
model_parts=$(carried .gpu_model)
case "${1:-}" in
  1)
    mkdir -p /tmp/gpu_model && cp -r "$model_parts"/. /tmp/gpu_model/ && ls -l /tmp/gpu_model
    exit 0
    ;;
  2) ;;
  *) echo "usage: $0 --prepare | 1 | 2" >&2; exit 2 ;;
esac
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
  "$carry"/whl/*.whl || exit 1
export PYTHONPATH="/tmp/site:$PWD/common/src:$PWD/services/worker/src:$PWD/services/distiller/src"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
teacher=()
if [ ! -f "$real/model.safetensors" ] && [ -f "$model_parts/part_01" ] && [ -f /tmp/gpu_model/part_00 ]; then
  cp "$model_parts/part_01" /tmp/gpu_model/ && bash /tmp/gpu_model/gpu_model_parts.sh --join /tmp/gpu_model \
    && python3 -c "from pathlib import Path; from radixfair_worker.model_store import convert_gguf; \
convert_gguf(Path('/tmp/gpu_model/SmolLM2-135M-Instruct.Q4_1.gguf'), Path('$real'))" > "$OUT/convert.log" 2>&1
  tail -c 600 "$OUT/convert.log"
fi
[ -f "$real/model.safetensors" ] && [ -f "$real/tokenizer.json" ] && teacher=(--teacher-dir "$real")
[ ${#teacher[@]} -gt 0 ] || echo "NO REAL TEACHER: the run uses random weights (its page says so)" >&2
# The script keeps to its own budget (every phase capped, the page written after each); the timeout
# is a backstop that still leaves the page of the last finished phase. ~20 s go to imports.
left=$(( 555 - SECONDS ))
budget=${BUDGET_S:-$(( left - 45 ))}
timeout -s TERM "$left" python3 bench/gpu_distill.py ${teacher[@]+"${teacher[@]}"} --time-budget-s "$budget" \
  --tokenizer-dir "$carry/tokenizer" --out "$OUT" \
  2>&1 | grep --line-buffered -v 'Loading weights' | tee "$OUT/gpu_distill.log"
ls -l "$OUT"
