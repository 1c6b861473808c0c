"""One worker: FCFS, LPM, LPM with aging, VTC and DLPM on every workload pattern, in the simulator.

Each pattern is first piloted (LPM, everything arriving at once) to measure
what one worker serves per second on it; the evaluated trace then offers
``--load`` times that, so clients stay backlogged and the policies differ in
whom they serve and how much the cache helps. Traces are saved under
bench/results/eval_traces/ (git-ignored), keyed by every parameter that shapes
them, and reused, so every policy replays the same one.

    .venv/bin/python bench/eval/eval_single_worker.py --cost cpu [--patterns shared_prefix ...]

Writes bench/results/eval_single_worker_<cost>.{json,md} when every pattern and
policy runs; a subset goes to bench/results/raw/partial/; ``--out DIR`` writes
there instead (and keeps its traces in DIR/eval_traces/).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.eval.eval_runs import (  # noqa: E402
    LOCAL_POLICIES,
    LOCAL_VARIANTS,
    RAW_RECORD_KEYS,
    TRACES,
    cost_model,
    output_dir,
    run,
    run_record,
    saved_trace,
    traces_dir,
)
from bench.report import write_results  # noqa: E402
from bench.simulator.cost_model import StepCostModel  # noqa: E402
from bench.workloads import build_pattern  # noqa: E402
from bench.workloads.trace import Trace  # noqa: E402

PATTERNS = (
    "shared_prefix",
    "shared_prefix_unequal",
    "no_sharing",
    "heavy_client",
    "hot_prefix",
    "multi_turn",
    "join_leave",
    "mixed",
)
# Pattern parameters beyond rate and duration: 16 clients with 2048-token documents make a
# working set of 32k tokens against 12k tokens of KV (768 pages), as in the paper's setting
# where the hot prefixes do not all fit.
SHAPE: dict[str, dict[str, Any]] = {
    "shared_prefix": {"num_clients": 16, "doc_tokens": 2048},
    "shared_prefix_unequal": {"num_clients": 16, "doc_tokens": 2048},
    "no_sharing": {"num_clients": 16},
    "heavy_client": {"num_light": 15, "doc_tokens": 2048},
    "hot_prefix": {"num_light": 15, "doc_tokens": 2048},
    "multi_turn": {"num_clients": 16, "system_tokens": 512},
    "join_leave": {"num_clients": 16, "doc_tokens": 2048},
    "mixed": {"num_clients": 15},
}
PILOT_REQUESTS = 200
PILOT_RATE = 1000.0


def _params(pattern: str, rate: float, duration: float) -> dict[str, Any]:
    params = {**SHAPE[pattern], "rate": rate, "duration_s": duration}
    if pattern == "join_leave":
        params["active_s"] = 0.45 * duration
    return params


def capacity(pattern: str, cost: StepCostModel, traces: Path = TRACES) -> tuple[float, float]:
    """(requests per second one LPM worker serves on ``pattern``, offered requests/s per unit of rate)."""
    spec = build_pattern(pattern, _params(pattern, PILOT_RATE, 1.0))
    per_unit = _count(spec) / PILOT_RATE
    duration = PILOT_REQUESTS / (per_unit * PILOT_RATE)
    pilot, _ = saved_trace(
        f"pilot_{pattern}", build_pattern(pattern, _params(pattern, PILOT_RATE, duration)), 99, traces
    )
    result, _ = run(pilot, cost, "lpm")
    return len(result.recorder.finished) / result.makespan, per_unit


def _count(spec) -> float:
    from bench.workloads import generate_trace

    return len(generate_trace(spec, 99).requests)


def evaluation_trace(
    pattern: str, cost_name: str, load: float, requests: int, traces: Path = TRACES
) -> tuple[Trace, Path, float]:
    served, per_unit = capacity(pattern, cost_model(cost_name), traces)
    rate = load * served / per_unit
    duration = requests / (load * served)
    spec = build_pattern(pattern, _params(pattern, rate, duration))
    trace, path = saved_trace(f"single_{pattern}_{cost_name}", spec, 1, traces)
    return trace, path, served


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cost", default="cpu")
    parser.add_argument("--patterns", nargs="*", default=list(PATTERNS))
    parser.add_argument(
        "--policies", nargs="*", default=list(LOCAL_POLICIES), choices=[*LOCAL_POLICIES, *LOCAL_VARIANTS]
    )
    parser.add_argument("--load", type=float, default=1.3)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--quantum", type=float, default=8192.0)
    parser.add_argument("--out", type=Path, default=None, help="results directory (default: see above)")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    complete = set(PATTERNS) <= set(args.patterns) and set(LOCAL_POLICIES) <= set(args.policies)
    out = output_dir(args.out, complete)
    cost = cost_model(args.cost)
    records = []
    for pattern in args.patterns:
        trace, path, served = evaluation_trace(
            pattern, args.cost, args.load, args.requests, traces_dir(args.out)
        )
        for policy in args.policies:
            result, wall = run(trace, cost, policy, quantum=args.quantum)
            record = run_record(
                result, wall, pattern=pattern, policy=policy, trace=path.name, lpm_capacity_rps=served
            )
            records.append(record)
            print(
                f"{pattern:22s} {policy:10s} thr={record['throughput_tok_s']:9.1f} tok/s "
                f"hit={record['hit_rate']:.2f} gap={record['service_gap']:9.0f} "
                f"(bound {record['gap_bound']:7.0f}) jain={record['jain']:.3f} "
                f"worst_p99={record['worst_client_e2e_p99']:8.2f}s wall={wall:5.1f}s",
                file=sys.stderr,
            )
    columns = [
        "pattern",
        "policy",
        "throughput_tok_s",
        "hit_rate",
        "ttft_p50",
        "ttft_p99",
        "e2e_p99",
        "worst_client_e2e_p99",
        "service_gap",
        "gap_bound",
        "jain",
        "preemptions",
        "sim_wall_s",
    ]
    notes = (
        f"Simulated single worker (real Engine and policies, cost model `{args.cost}`), "
        f"offered load {args.load}x the LPM capacity of each pattern, ~{args.requests} requests per trace, "
        f"DLPM quantum {args.quantum:g}, KV 768 pages x 16 tokens. Latencies in seconds of virtual time. "
        "service_gap: worst swing of the weight-normalised service difference of two tracked clients "
        "while both were backlogged; gap_bound: DLPM's bound for that pair (scheduler/dlpm.py)."
    )
    write_results(
        f"eval_single_worker_{args.cost}",
        records,
        columns,
        {"cost": args.cost, "cost_model": cost.__dict__, "load": args.load, "quantum": args.quantum},
        notes,
        raw_row_keys=RAW_RECORD_KEYS,
        results_dir=out,
    )


if __name__ == "__main__":
    main()
