#!/usr/bin/env bash
# Two of issue 11's checks that need the GPU machine's 16 cores, in one device call:
# 1. the CPU target: router + 2 CPU workers against the summed in-process engines (serving_bench
#    --workers 2: router_vs_summed_in_process_tok_s), SmolLM2-135M shape, random weights, fp32, torch
#    kernels, 4 torch threads per engine, unique prompts (tag cpu16_2workers);
# 2. what the router adds to one stream's TTFT, phase by phase, on the CUDA worker
#    (bench/engine/router_overhead.py, tag gpu_h200_router_overhead_now).
# Prepare as for gpu_serving_session.sh (bash bench/engine/gpu_serving_session.sh --prepare), then:
#   run(command="bash bench/engine/gpu_host_cpu_session.sh", carry=["bench/scratch/gpu_serving"], timeout_s=600)
# CPU_ONLY=1 or OVERHEAD_ONLY=1 runs one half; OVERHEAD_TAG and OVERHEAD_EXTRA (e.g. --no-ahead-target)
# set the second half's tag and extra flags.
set -uo pipefail
carry=bench/scratch/gpu_serving
# shellcheck source=bench/engine/gpu_env.sh
source bench/engine/gpu_env.sh
if [ "${OVERHEAD_ONLY:-0}" != 1 ]; then
  timeout -s TERM "${CPU_TIMEOUT_S:-300}" python3 bench/engine/serving_bench.py --shape smollm2-135m \
    --tokenizer-dir "$carry/tokenizer" --device cpu --dtype float32 --backend torch --torch-threads 4 \
    --workers 2 --paths in_process router --concurrency 4 8 16 --workloads unique --new-tokens 64 \
    --cell-duration-s 10 --min-requests 8 --warmup-requests 4 --client-procs 2 \
    --tag cpu16_2workers --out-dir "$OUT" 2>&1 | grep -v '^{' | tail -30
fi
if [ "${CPU_ONLY:-0}" != 1 ]; then
  timeout -s TERM "${OVERHEAD_TIMEOUT_S:-240}" python3 bench/engine/router_overhead.py \
    --tag "${OVERHEAD_TAG:-gpu_h200_router_overhead_now}" --out-dir "$OUT" --requests "${OVERHEAD_REQUESTS:-48}" --prompt-len 128 \
    --new-tokens 128 --logs-dir /tmp/overhead_logs --redis-modes always no ${OVERHEAD_EXTRA:-} \
    --serving-args "--shape smollm2-135m --tokenizer-dir $carry/tokenizer --device cuda --dtype bfloat16 --backend triton" \
    2>&1 | tail -60
fi
