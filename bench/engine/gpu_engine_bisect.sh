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
set -uo pipefail
scratch=bench/scratch/bisect
: "${COMMITS:?name the commits: COMMITS=\"a b ...\"}"
if [ "${1:-}" = "--prepare" ]; then
  set -e
  rm -rf "$scratch" && mkdir -p "$scratch/whl"
  cp bench/scratch/gpu_serving/whl/opentelemetry* bench/scratch/gpu_serving/whl/typing_ext* "$scratch/whl/"
  for commit in $COMMITS; do
    mkdir -p "$scratch/$commit"
    # model_format/ exists from b99c001 on; older trees archive without it.
    paths=(common/src services/worker/src bench)
    git cat-file -e "$commit:model_format/src" 2>/dev/null && paths+=(model_format/src)
    git archive "$commit" "${paths[@]}" | tar -x -C "$scratch/$commit"
    rm -rf "$scratch/$commit/bench/results" "$scratch/$commit/bench/scratch"
    cp common/src/radixfair/v1/*_pb2*.py "$scratch/$commit/common/src/radixfair/v1/"
  done
  du -sh "$scratch"
  exit 0
fi
python3 -m pip install -q --no-index --no-deps --target /tmp/site "$scratch"/whl/*.whl || exit 1
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader
for commit in $COMMITS; do
  echo "=== $commit"
  mkdir -p "$OUT/$commit"
  # The bench's own path differs by commit (bench/ before the move, bench/engine/ after).
  script=bench/engine/gpu_engine_bench.py
  [ -f "$scratch/$commit/$script" ] || script=bench/gpu_engine_bench.py
  (cd "$scratch/$commit" && PYTHONPATH=/tmp/site:common/src:model_format/src:services/worker/src PYTHONUNBUFFERED=1 \
     timeout 150 python3 "$script" --ours-only --batches ${BATCHES:-1 128} --out "$OUT/$commit" 2>&1 \
     | grep -E "^\|" | tail -8)
done
