#!/usr/bin/env bash
# Issue 15 on the H200s (bench/distill/gpu_distill.py, bench/distill/gpu_distill_ddp.py), with the real teacher. The
# teacher's GGUF travels in two parts (../shared/tools/gpu_model_parts.sh), so every phase that needs
# it follows call 1 back to back (the machine must still be warm; it is given back ~30 s after a call).
#
# Here, once:  bash ../shared/tools/gpu_model_parts.sh        (writes .gpu_model/, ignored by git)
#              bash bench/distill/gpu_distill_session.sh --prepare    (bench/scratch/gpu_distill: wheels, tokenizer)
# Call 1 (seconds): part_00 of the GGUF to /tmp/gpu_model.
#   run(command="cd .snap && bash bench/distill/gpu_distill_session.sh 1",
#       carry=[".gpu_model/part_00", ".gpu_model/sha256", ".gpu_model/whl", ".gpu_model/gpu_model_parts.sh"],
#       timeout_s=120)
# Then, at once, one of (each joins the GGUF and converts it to /tmp/smollm2-real, the worker's model
# store, unless that exists already; without the parts it runs on random weights and its page says so):
#   2      (<= 9.5 min) the first call: data, sweep, the depth student (and the width one if time is left).
#          run(command="cd .snap && bash bench/distill/gpu_distill_session.sh 2",
#              carry=[".gpu_model/part_01", "bench/scratch/gpu_distill"], timeout_s=600)
#   width  (<= 480 s) the width student alone: pruning's importance scores as start, forward KL, bf16,
#          fused chunked loss, its own token budget; text: all stdlib docstrings, and half the text rows
#          from the stdlib's code (docstrings cut out; more distinct tokens than 60 passes over the
#          docstrings the first call made); writes
#          distill_results_gpu_width.* and distill_results_gpu.* (the committed page with its rows added).
#          run(command="cd .snap && bash bench/distill/gpu_distill_session.sh width",
#              carry=[".gpu_model/part_01", "bench/scratch/gpu_distill"], timeout_s=480)
#   width_long (<= 560 s) the width student again with the whole call for it and the quantized format's
#          version 2 (fp8: the embedding in int8): no decode timing (the width call's page has it), 110 s
#          of teacher answers (~2.4M tokens, 1.4x the width call's), ~37M training tokens; scores int8,
#          fp8 and fp8 in version 1's layout on the same student, the teacher's int8 / fp8 in version 2
#          (rows "teacher int8 (width_long)" on the merged page), and the student on training data (the
#          train / held-out gap). Replaces the width call's rows on the merged page (its own page stays);
#          writes distill_results_gpu_width_long.* and distill_results_gpu.*. Prediction: notes/DECISIONS.md.
#          run(command="cd .snap && bash bench/distill/gpu_distill_session.sh width_long",
#              carry=[".gpu_model/part_01", "bench/scratch/gpu_distill"], timeout_s=560)
#   hard_long (<= 560 s) width_long's student, data mix and token budget trained on hard labels only
#          (issue 15's same-budget row); writes distill_results_gpu_hard_long.* and the merged page,
#          whose targets then judge KD against it ("width student (hard labels)").
#          run(command="cd .snap && bash bench/distill/gpu_distill_session.sh hard_long",
#              carry=[".gpu_model/part_01", "bench/scratch/gpu_distill"], timeout_s=560)
#   ddp    (<= 400 s, kind nvidia-h200-x2) torchrun on 2 GPUs (NCCL) against 1 GPU, same seed, data and
#          global batch; writes distill_torchrun_gpu.* and distill_results_gpu.* with the two curves added.
#          With the real teacher: call 1 with kind="nvidia-h200-x2", then at once
#          run(command="cd .snap && bash bench/distill/gpu_distill_session.sh ddp",
#              carry=[".gpu_model/part_01", "bench/scratch/gpu_distill"], kind="nvidia-h200-x2", timeout_s=400)
#          Without call 1 (or part_01) it uses random weights in the teacher's shape and says so; the
#          KD loss of a student pruned from a random teacher is ~1e-9, so that comparison shows only
#          that NCCL runs (2026-11-30: its curves differed by spikes of ~2 on a ~0 loss).
# Carried paths are looked up here and one level up (the lead runs from a snapshot directory, .snap/).
# EXTRA_ARGS (words) go to the phase's Python script last, e.g. EXTRA_ARGS="--smoke" for a CPU check of
# this script's own steps; BUDGET_S overrides the script's time budget.
# Results in $OUT: the pages (rewritten after every phase) and a log per phase.
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
  model=$("$py" -c 'from pathlib import Path; from radixfair_model_format.model_store import PACKAGED_MODEL, resolve_model_dir as r; print(r(PACKAGED_MODEL, Path("~/.cache/radixfair/models").expanduser()))')
  cp "$model"/tokenizer.json "$model"/tokenizer_config.json "$model"/chat_template.jinja "$carry/tokenizer/"
  du -sh "$carry"
  exit 0
fi
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
real=/tmp/smollm2-real
carry=$(carried "$carry")
model_parts=$(carried .gpu_model)
phase=${1:-}
case "$phase" in
  1)
    mkdir -p /tmp/gpu_model && cp -r "$model_parts"/. /tmp/gpu_model/ && ls -l /tmp/gpu_model
    exit 0
    ;;
  2) limit=555 ;;
  width) limit=475 ;;
  width_long|hard_long) limit=555 ;;
  ddp) limit=395 ;;
  *) echo "usage: $0 --prepare | 1 | 2 | width | width_long | hard_long | ddp" >&2; exit 2 ;;
esac
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
  "$carry"/whl/*.whl || exit 1
export PYTHONPATH="/tmp/site:$PWD/common/src:$PWD/model_format/src:$PWD/engine/src:$PWD/services/worker/src:$PWD/services/distiller/src"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
teacher=()
if [ ! -f "$real/model.safetensors" ] && [ -f "$model_parts/part_01" ] && [ -f /tmp/gpu_model/part_00 ]; then
  cp "$model_parts/part_01" /tmp/gpu_model/ && bash /tmp/gpu_model/gpu_model_parts.sh --join /tmp/gpu_model \
    && python3 -c "from pathlib import Path; from radixfair_model_format.model_store import convert_gguf; \
convert_gguf(Path('/tmp/gpu_model/SmolLM2-135M-Instruct.Q4_1.gguf'), Path('$real'))" > "$OUT/convert.log" 2>&1
  tail -c 600 "$OUT/convert.log"
fi
[ -f "$real/model.safetensors" ] && [ -f "$real/tokenizer.json" ] && teacher=(--teacher-dir "$real")
[ ${#teacher[@]} -gt 0 ] || echo "NO REAL TEACHER: the run uses random weights (its page says so)" >&2
# The scripts keep to their own budgets (every phase capped, the page written after each); the timeout
# is a backstop that still leaves the page of the last finished phase. ~20 s go to imports.
left=$(( limit - SECONDS ))
budget=${BUDGET_S:-$(( left - 45 ))}
page=bench/results/distill_results_gpu.json  # the committed page the later calls add to
filter() { grep --line-buffered -v 'Loading weights' | tee "$OUT/$1.log"; }
case "$phase" in
  2)
    timeout -s TERM "$left" python3 bench/distill/gpu_distill.py ${teacher[@]+"${teacher[@]}"} --time-budget-s "$budget" \
      --tokenizer-dir "$carry/tokenizer" --out "$OUT" ${EXTRA_ARGS:-} 2>&1 | filter gpu_distill
    ;;
  width)
    # Forward KL won the first call's sweep, so no sweep; the teacher's int8 / fp8 rows are on the page.
    # Data gets 95 s (the first call: 17% = 81 s), since the text and code streams are built inside it
    # and the first call's student saw its ~0.46M distinct tokens ~75 times (train KL 0.16, held-out 0.96).
    timeout -s TERM "$left" python3 bench/distill/gpu_distill.py ${teacher[@]+"${teacher[@]}"} --time-budget-s "$budget" \
      --tokenizer-dir "$carry/tokenizer" --out "$OUT" --students width --sweep "" --loss forward_kl \
      --no-teacher-quantized --text-max-files 0 --code-fraction 0.5 --data-s 95 --decode-s 40 \
      --name distill_results_gpu_width \
      --merge-into "$page" ${EXTRA_ARGS:-} 2>&1 | filter gpu_distill_width
    ;;
  width_long)
    # Same data mix and loss as width; the time the width call spent timing decode goes to training,
    # bar ~5 s for the teacher's int8 / fp8 copies in the format's version 2.
    timeout -s TERM "$left" python3 bench/distill/gpu_distill.py ${teacher[@]+"${teacher[@]}"} --time-budget-s "$budget" \
      --tokenizer-dir "$carry/tokenizer" --out "$OUT" --students width --sweep "" --loss forward_kl \
      --text-max-files 0 --code-fraction 0.5 --data-s 110 --decode-s 0 \
      --name distill_results_gpu_width_long \
      --merge-into "$page" ${EXTRA_ARGS:-} 2>&1 | filter gpu_distill_width_long
    ;;
  hard_long)
    # Issue 15's "the same student trained on hard labels only, at the same budget": width_long's
    # student, data mix and token budget (36,012,032 tokens), the teacher's answers as plain labels.
    # Its rows are "width student (hard labels)"; the page judges KD against them.
    timeout -s TERM "$left" python3 bench/distill/gpu_distill.py ${teacher[@]+"${teacher[@]}"} --time-budget-s "$budget" \
      --tokenizer-dir "$carry/tokenizer" --out "$OUT" --students width --sweep "" --loss hard_labels \
      --no-teacher-quantized --text-max-files 0 --code-fraction 0.5 --data-s 110 --decode-s 0 \
      --width-tokens 36012032 --name distill_results_gpu_hard_long \
      --merge-into "$page" ${EXTRA_ARGS:-} 2>&1 | filter gpu_distill_hard_long
    ;;
  ddp)
    gpus=$(nvidia-smi -L 2>/dev/null | wc -l)
    if [ "${gpus:-0}" -lt 2 ] && [[ "${EXTRA_ARGS:-}" != *--nproc* ]]; then
      echo "ddp: $gpus GPU(s) here; it needs two (run it on the nvidia-h200-x2 kind)" >&2; exit 2
    fi
    timeout -s TERM "$left" python3 bench/distill/gpu_distill_ddp.py ${teacher[@]+"${teacher[@]}"} --time-budget-s "$budget" \
      --tokenizer-dir "$carry/tokenizer" --out "$OUT" --nproc "$(( gpus < 2 ? gpus : 2 ))" \
      --merge-into "$page" ${EXTRA_ARGS:-} 2>&1 | filter gpu_distill_ddp
    ;;
esac
ls -l "$OUT"
