"""DLPM's quantum Q against throughput and the service gap, on one worker (simulated).

Q trades fairness (small Q: the bound 2Q + ... is tight) for locality (large
Q: a client's cached requests run back to back). Replays the single-worker
trace of ``--pattern`` (made by eval_single_worker.py) under DLPM for each Q.

    .venv/bin/python bench/eval/eval_quantum_sweep.py --cost cpu

Writes bench/results/eval_quantum_sweep_<cost>.{json,md}.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.eval.eval_runs import RAW_RECORD_KEYS, cost_model, output_dir, run, run_record, traces_dir  # noqa: E402
from bench.eval.eval_single_worker import evaluation_trace  # noqa: E402
from bench.report import write_results  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cost", default="cpu")
    parser.add_argument("--pattern", default="shared_prefix_unequal")
    parser.add_argument("--load", type=float, default=1.3)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument(
        "--quanta", nargs="*", type=float, default=[256, 1024, 2048, 4096, 8192, 16384, 65536, 262144]
    )
    parser.add_argument("--out", type=Path, default=None, help="results directory (default bench/results/)")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    cost = cost_model(args.cost)
    trace, path, _ = evaluation_trace(args.pattern, args.cost, args.load, args.requests, traces_dir(args.out))
    records = []
    for quantum in args.quanta:
        result, wall = run(trace, cost, "dlpm", quantum=quantum)
        record = run_record(
            result, wall, pattern=args.pattern, policy="dlpm", quantum=quantum, trace=path.name
        )
        records.append(record)
        print(
            f"Q={quantum:8g} thr={record['throughput_tok_s']:9.1f} hit={record['hit_rate']:.2f} "
            f"gap={record['service_gap']:8.0f} bound={record['gap_bound']:8.0f} jain={record['jain']:.3f}",
            file=sys.stderr,
        )
    columns = [
        "quantum",
        "throughput_tok_s",
        "hit_rate",
        "service_gap",
        "gap_bound",
        "jain",
        "worst_client_e2e_p99",
    ]
    notes = f"DLPM on the `{args.pattern}` single-worker trace `{path.name}`, cost model `{args.cost}`."
    write_results(
        f"eval_quantum_sweep_{args.cost}",
        records,
        columns,
        {"cost": args.cost, "quantum": None},
        notes,
        raw_row_keys=RAW_RECORD_KEYS,
        results_dir=output_dir(args.out, True),
    )


if __name__ == "__main__":
    main()
