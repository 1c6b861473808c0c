#!/usr/bin/env bash
# An interleaved A/B of serving settings or code on the GPU machine, in one device call, and its page.
#
# The lent host is bimodal (a cell differs by +-10k tokens/s from run to run), so variants run in
# turn, ROUNDS times (A B C A B C ...), each a bench/engine/gpu_serving_session.sh run, and one page
# (bench/engine/serving_ab_summary.py) gives every run's cells and each variant's median and worst.
#
# VARIANTS: one per line, "name|directory|serving_bench args": directory is a copy of the repository to
# run the variant from ("." for this one: code A/Bs carry a `git archive` of the other commit), args
# are added to the bench's (e.g. --worker-set engine_pipe_io=inline). Run from the repository root:
#
#   run(command='cd .snap && AB_TAG=gpu_h200_pipe_io_ab VARIANTS="threads|.|
#   inline|.|--worker-set engine_pipe_io=inline" bash bench/engine/gpu_serving_ab.sh',
#       carry=[".snap", "bench/scratch/gpu_serving"])
#
# SESSION names another run script with gpu_serving_session.sh's interface (how this is tried on a CPU).
# ROUNDS (2), PATHS ("worker"), WORKLOADS ("unique shared_prefix"), CONCURRENCY (256), CELL_DURATION_S
# (8), CLIENT_PROCS (8), BENCH_TIMEOUT_S per run (150). Only the page comes back ($OUT/<AB_TAG>.{json,md});
# the runs' own files are removed (the device returns 8 files at most).
set -uo pipefail
carry=bench/scratch/gpu_serving
here=$PWD
# Run from a copy inside the repository (cd .snap): the carried folder is the repository's.
if [ ! -d "$carry" ] && [ -d "../$carry" ]; then
  mkdir -p bench/scratch && ln -sfn "$(cd "../$carry" && pwd)" "$carry"
fi
tag=${AB_TAG:?name the page: AB_TAG=...}
runs=()
for round in $(seq 1 "${ROUNDS:-2}"); do
  while IFS='|' read -r name dir args; do
    [ -n "$name" ] || continue
    (
      cd "$dir" || exit 1
      if [ "$PWD" != "$here" ]; then
        mkdir -p bench/scratch && ln -sfn "$here/$carry" "$carry"
      fi
      # shellcheck disable=SC2097,SC2098  # OUT is the device's, passed on as it is
      OUT=$OUT TAG="${tag}_${name}_${round}" PATHS="${PATHS:-worker}" \
        WORKLOADS="${WORKLOADS:-unique shared_prefix}" CONCURRENCY="${CONCURRENCY:-256}" \
        CELL_DURATION_S="${CELL_DURATION_S:-8}" BENCH_TIMEOUT_S="${BENCH_TIMEOUT_S:-150}" \
        EXTRA="--client-procs ${CLIENT_PROCS:-8} $args" bash "${SESSION:-bench/engine/gpu_serving_session.sh}" > /dev/null 2>&1
    )
    runs+=(--run "$name=$OUT/serving_${tag}_${name}_${round}.json")
    echo "round $round $name: $(ls "$OUT/serving_${tag}_${name}_${round}.json" 2>/dev/null || echo missing)"
  done <<< "$VARIANTS"
done
python3 bench/engine/serving_ab_summary.py --name "$tag" --out-dir "$OUT" \
  --device-command "AB_TAG=$tag ROUNDS=${ROUNDS:-2} VARIANTS='$VARIANTS' bash bench/engine/gpu_serving_ab.sh" \
  "${runs[@]}"
sed -n '/Per variant/,/Every run/p' "$OUT/$tag.md"
# The runs' own files go only once the page holds them (the device returns 8 files at most).
[ -f "$OUT/$tag.md" ] && find "$OUT" -maxdepth 1 -type f ! -name "$tag.json" ! -name "$tag.md" -delete
