#!/usr/bin/env bash
# Does other work on the host slow the engine's host thread? The in-process serving cell (unique,
# 256 streams, 6 s), pinned to CPU 2, alone and beside busy-looping Python processes pinned to other
# CPUs: one on CPU 10, one on CPU 3, five on CPUs 3-7, then alone again. Each cell prints its
# tokens/s, ms a step and the loop thread's share of the wall on a CPU and in the run queue (the
# serving bench's schedstat columns). Pages: $OUT/serving_gpu_h200_s11_pin_<case>.{json,md} (the
# device returns 8 files: the last case's may be left out; the printed lines hold its figures).
#
#   run(command='bash .snap/bench/engine/gpu_host_contention.sh', carry=[".snap", "bench/scratch/gpu_serving"])
#
# (.snap: a `git archive` of the commit, prepared as bench/engine/gpu_serving_session.sh says.)
set -uo pipefail
cd .snap && mkdir -p bench/scratch && ln -sfn ../../../bench/scratch/gpu_serving bench/scratch/gpu_serving
cell() {
  TAG=$1 PATHS=in_process WORKLOADS=unique CONCURRENCY=256 CELL_DURATION_S=6 EXTRA="--client-procs 8" \
    BENCH_TIMEOUT_S=90 taskset -c 2 bash bench/engine/gpu_serving_session.sh > /dev/null 2>&1
  python3 -c "import json,sys; d=json.load(open(sys.argv[1])); [print({k: r.get(k) for k in ('out_tok_s','step_ms','steps_per_s','loop_on_cpu_share','loop_runqueue_share')}) for r in d['rows']]" "$OUT/serving_$1.json"
}
pids=""
burn() { pids=""; for c in "$@"; do taskset -c "$c" timeout 200 python3 -c "while 1: pass" & pids="$pids $!"; done; }
# shellcheck disable=SC2086  # pids is a list
echo alone; cell gpu_h200_s11_pin_alone
echo burn10; burn 10; cell gpu_h200_s11_pin_b10; kill $pids
echo burn3; burn 3; cell gpu_h200_s11_pin_b3; kill $pids
echo burn5; burn 3 4 5 6 7; cell gpu_h200_s11_pin_b34567; kill $pids
echo alone2; cell gpu_h200_s11_pin_alone2
rm -f "$OUT"/*.log
