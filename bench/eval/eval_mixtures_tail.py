"""Where the within-share tail of a randomised mixture waits: the router's gate, a worker's queue, or service.

For each development seed and routing policy, the slowest ``--tail`` fraction of the
within-share clients' requests (at least one; the requests at and above the pooled p99
when the fraction is 0.01) is split into the three parts of its end-to-end latency:
held in the router's admission gate (arrival to placement; zero without a gate), waiting
in the worker's queue (placement to admission) and service (admission to the last token).
Also: the tail's hit fraction, output length, arrival time and the routing reasons.

This is the diagnostic of issue 13 (docs/evaluation.md, "Workloads not tuned on"). It runs
on development seeds only: the fixed seeds of bench/eval/eval_mixtures.py are refused, so that
nothing is ever tuned against them.

    .venv/bin/python bench/eval/eval_mixtures_tail.py --workers 16 --requests-per-worker 30 --flood-load 4 \
        --seeds 1 2 3 --name _16w_flood4_dev

Writes bench/results/eval_mixtures_tail_<cost><name>.{json,md}; ``--out DIR`` writes there instead.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.eval.eval_mixtures import SEEDS  # noqa: E402
from bench.eval.eval_runs import (  # noqa: E402
    LOCAL_FOR_ROUTING,
    ROUTING_POLICIES,
    ROUTING_VARIANTS,
    cost_model,
    output_dir,
    routing_settings,
    run,
    saved_trace,
    traces_dir,
)
from bench.eval.eval_single_worker import capacity  # noqa: E402
from bench.report import write_results  # noqa: E402
from bench.simulator.metrics import percentile  # noqa: E402
from bench.simulator.recorder import FinishedRequest  # noqa: E402
from bench.workloads.mixtures import random_mixture  # noqa: E402


def tail_split(requests: list[FinishedRequest], fraction: float) -> dict[str, Any]:
    """The slowest ``fraction`` of ``requests`` (at least one) and the mean of each part of their latency.

    gate + queue + service = end-to-end, request by request, so the three means add up to the tail's
    mean latency."""
    ordered = sorted(requests, key=lambda f: f.finished - f.arrival)
    tail = ordered[-max(1, round(fraction * len(ordered))) :]
    prompt = sum(f.prompt_tokens for f in tail)
    return {
        "tail_requests": len(tail),
        "tail_e2e": float(np.mean([f.finished - f.arrival for f in tail])),
        "tail_gate": float(np.mean([f.dispatched - f.arrival for f in tail])),
        "tail_queue": float(np.mean([f.admitted - f.dispatched for f in tail])),
        "tail_service": float(np.mean([f.finished - f.admitted for f in tail])),
        "tail_hit": sum(f.cached_tokens for f in tail) / max(prompt, 1),
        "tail_output_tokens": float(np.mean([f.output_tokens for f in tail])),
        "tail_arrival": float(np.mean([f.arrival for f in tail])),
        "tail_routes": dict(Counter(f.route for f in tail)),
    }


def run_seed(seed: int, args: argparse.Namespace, served: float) -> list[dict[str, Any]]:
    mixture = random_mixture(seed, args.workers, served, args.requests_per_worker, args.flood_load)
    trace, path = saved_trace(mixture.spec.name, mixture.spec, seed, traces_dir(args.out))
    cost = cost_model(args.cost)
    within = set(mixture.within_share())
    rows: list[dict[str, Any]] = []
    for routing in args.policies:
        policy, overrides = routing_settings(routing)
        result, wall = run(
            trace,
            cost,
            LOCAL_FOR_ROUTING[routing],
            quantum=args.quantum,
            workers=args.workers,
            routing=policy,
            routing_overrides=overrides,
        )
        mine = [f for f in result.recorder.finished if f.client_id in within]
        rows.append(
            {
                "seed": seed,
                "workers": args.workers,
                "routing": routing,
                "within_requests": len(mine),
                "within_p99": percentile([f.finished - f.arrival for f in mine], 99),
                "last_arrival": max(r.arrival_s for r in trace.requests),
                **tail_split(mine, args.tail),
                "trace": path.name,
                "sim_wall_s": wall,
            }
        )
        base = next((r for r in rows if r["routing"] == args.policies[0]), rows[-1])
        rows[-1][f"{args.policies[0]}_over_this_within_p99"] = base["within_p99"] / rows[-1]["within_p99"]
        print(
            f"seed {seed} {routing:12s} within_p99={rows[-1]['within_p99']:.2f}s "
            f"tail gate/queue/service={rows[-1]['tail_gate']:.2f}/{rows[-1]['tail_queue']:.2f}/"
            f"{rows[-1]['tail_service']:.2f}s wall={wall:.0f}s",
            file=sys.stderr,
        )
    return rows


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cost", default="h100_7b_analytic")
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--seeds", nargs="*", type=int, default=[1, 2, 3])
    parser.add_argument(
        "--policies",
        nargs="*",
        default=["cache_aware", "d2lpm", "d2lpm_gated"],
        choices=[*ROUTING_POLICIES, *ROUTING_VARIANTS],
        help="the first is the baseline of the ratio column",
    )
    parser.add_argument("--requests-per-worker", type=int, default=30)
    parser.add_argument("--flood-load", type=float, default=None)
    parser.add_argument("--quantum", type=float, default=8192.0, help="the workers' local DLPM/LPM quantum")
    parser.add_argument("--tail", type=float, default=0.02, help="the slowest fraction of requests split")
    parser.add_argument("--name", default="")
    parser.add_argument("--out", type=Path, default=None, help="results directory (default bench/results/)")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    fixed = sorted(set(args.seeds) & set(SEEDS))
    if fixed:
        raise SystemExit(f"seeds {fixed} are the fixed evaluation seeds: diagnose on development seeds only")
    out = output_dir(args.out, bool(args.name))
    served, _ = capacity("heavy_client", cost_model(args.cost), traces_dir(args.out))
    rows = [row for seed in args.seeds for row in run_seed(seed, args, served)]
    base = args.policies[0]
    columns = [
        "seed",
        "routing",
        "within_requests",
        "within_p99",
        f"{base}_over_this_within_p99",
        "tail_requests",
        "tail_e2e",
        "tail_gate",
        "tail_queue",
        "tail_service",
        "tail_hit",
        "tail_output_tokens",
        "tail_arrival",
        "last_arrival",
    ]
    notes = " ".join(
        [
            f"Development seeds {args.seeds} (never the fixed seeds), {args.workers} workers,",
            f"~{args.requests_per_worker} requests per worker,",
            f"heavy flood {args.flood_load:g}x," if args.flood_load else "plain mixture,",
            f"local quantum {args.quantum:g}, cost model `{args.cost}`, simulated.",
            "within_p99: p99 end-to-end latency (s) of the within-share clients' requests, pooled;",
            f"{base}_over_this: the first policy's over this one's (above 1: this one is better).",
            f"tail_*: means over the slowest {args.tail:g} of those requests: e2e = gate (held in the",
            "router's admission gate) + queue (placed, waiting in the worker's queue) + service",
            "(admitted to last token); hit: cached over prompt tokens; arrival: mean arrival time (s),",
            "against last_arrival, the trace's last. Routing reasons per row are in the JSON.",
        ]
    )
    write_results(
        f"eval_mixtures_tail_{args.cost}{args.name}",
        rows,
        columns,
        {"cost": args.cost, "capacity_rps": served, "args": vars(args)},
        notes,
        results_dir=out,
    )


if __name__ == "__main__":
    main()
