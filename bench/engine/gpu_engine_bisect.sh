#!/usr/bin/env bash
# gpu_engine_bench --ours-only for several commits on one GPU machine in one call, one process per
# commit, so host drift hits every commit alike (bench/results/gpu_engine_bisect_h200.md).
#
# Here:  COMMITS="41ca89d 8f2f608" bash bench/engine/gpu_engine_bisect.sh --prepare
#        (fills bench/scratch/bisect/<commit>/ with a git archive of each commit's code and bench/, plus
#        the opentelemetry wheels the GPU image lacks, from bench/scratch/gpu_serving/whl)
# Device: run(command='COMMITS="41ca89d 8f2f608" bash bench/engine/gpu_engine_bisect.sh',
#             carry=["bench/scratch/bisect"], timeout_s=600)   (~28 s a commit at --batches 1 128)
# Each commit's page lands in $OUT/<commit>/gpu_engine_ours.{json,md}; the tables print as they come.
# SERVING=1 runs instead the serving bench's in-process engine on both workloads at 256 streams (timed
# 8 s cells; pages $OUT/<commit>/serving_bisect_r<round>.{json,md}), ROUNDS times over the commits in
# turn (default 2), for an engine change on the shared-prefix workload; prepare with SERVING=1 too
# (it also takes every gpu_serving wheel and the tokenizer).
set -uo pipefail
scratch=bench/scratch/bisect
: "${COMMITS:?name the commits: COMMITS=\"a b ...\"}"
if [ "${1:-}" = "--prepare" ]; then
  set -e
  rm -rf "$scratch" && mkdir -p "$scratch/whl"
  cp bench/scratch/gpu_serving/whl/opentelemetry* bench/scratch/gpu_serving/whl/typing_ext* "$scratch/whl/"
  if [ "${SERVING:-0}" = 1 ]; then
    cp bench/scratch/gpu_serving/whl/*.whl "$scratch/whl/"
    cp -r bench/scratch/gpu_serving/tokenizer "$scratch/tokenizer"
  fi
  for commit in $COMMITS; do
    mkdir -p "$scratch/$commit"
    # model_format/ exists from b99c001 on; older trees archive without it.
    paths=(common/src services/worker/src bench)
    git cat-file -e "$commit:model_format/src" 2>/dev/null && paths+=(model_format/src)
    # engine/ (radixfair_engine) exists from the engine-package split on.
    git cat-file -e "$commit:engine/src" 2>/dev/null && paths+=(engine/src)
    git archive "$commit" "${paths[@]}" | tar -x -C "$scratch/$commit"
    rm -rf "$scratch/$commit/bench/results" "$scratch/$commit/bench/scratch"
    cp common/src/radixfair/v1/*_pb2*.py "$scratch/$commit/common/src/radixfair/v1/"
  done
  du -sh "$scratch"
  exit 0
fi
python3 -m pip install -q --no-index --no-deps --target /tmp/site "$scratch"/whl/*.whl || exit 1
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader
if [ "${SERVING:-0}" = 1 ]; then
  tokenizer="$PWD/$scratch/tokenizer"
  for round in $(seq 1 "${ROUNDS:-2}"); do
    for commit in $COMMITS; do
      echo "=== $commit round $round"
      mkdir -p "$OUT/$commit"
      (cd "$scratch/$commit" && PYTHONPATH=/tmp/site:common/src:model_format/src:engine/src:services/worker/src:services/router/src \
         PYTHONUNBUFFERED=1 timeout 200 python3 bench/engine/serving_bench.py --shape smollm2-135m \
         --tokenizer-dir "$tokenizer" --device cuda --dtype bfloat16 --backend triton --paths in_process \
         --workloads shared_prefix unique --concurrency 256 --cell-duration-s 8 --warmup-requests 16 \
         --tag "bisect_r$round" --out-dir "$OUT/$commit" 2>&1 | grep -E "^\| in_process" | tail -4)
    done
  done
  exit 0
fi
for commit in $COMMITS; do
  echo "=== $commit"
  mkdir -p "$OUT/$commit"
  # The bench's own path differs by commit (bench/ before the move, bench/engine/ after).
  script=bench/engine/gpu_engine_bench.py
  [ -f "$scratch/$commit/$script" ] || script=bench/gpu_engine_bench.py
  (cd "$scratch/$commit" && PYTHONPATH=/tmp/site:common/src:model_format/src:engine/src:services/worker/src PYTHONUNBUFFERED=1 \
     timeout 150 python3 "$script" --ours-only --batches ${BATCHES:-1 128} --out "$OUT/$commit" 2>&1 \
     | grep -E "^\|" | tail -8)
done
