"""D2LPM against cache-aware routing on randomised mixtures of the patterns, over seeds fixed in advance.

Each seed draws a workload (bench/workloads/mixtures.py: flooders, clients on
shared, unique, drifting and conversation prefixes, a client that goes idle
and returns, random weights, rates and prefix lengths) for each cluster size;
every routing policy replays the same saved trace in the simulator. Reported
per (workers, policy): the median and the worst seed of the p99 end-to-end
latency of the within-share clients (all their requests pooled), of the
flooders' p99, and of the hit rate; and per seed the ratio of cache-aware's
within-share p99 to D2LPM's (above 1: D2LPM is better).

    .venv/bin/python bench/eval/eval_mixtures.py --cost h100_7b_analytic --workers 4 16 64
    .venv/bin/python bench/eval/eval_mixtures.py --workers 4 --flood-load 4 --name _4w_flood4   # heavy flood

Writes bench/results/eval_mixtures_<cost><name>.{json,md}; ``--out DIR`` writes there instead.
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
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
from bench.simulator.metrics import percentile, summarize  # noqa: E402
from bench.workloads.mixtures import random_mixture  # noqa: E402

# Fixed on 2026-11-30 at 02:30 UTC, before any run of this script and before any tuning of D2LPM
# or its variants against these workloads (docs/evaluation.md, "Workloads not tuned on"). Do not
# change them to make a result look better; add seeds instead and report all of them.
SEEDS = (1101, 2203, 3307, 4409, 5501, 6607, 7703)
POLICIES = ("cache_aware", "cache_aware_sglang", "d2lpm", "d2lpm_gated")
# The baselines every policy is compared with on the same seed: our cache-aware router, and
# cache-aware with the SGLang router's default thresholds.
BASELINES = ("cache_aware", "cache_aware_sglang")


def run_policy(
    seed: int, workers: int, routing: str, args: argparse.Namespace, served: float
) -> dict[str, Any]:
    """One policy on one seed's trace (generated the first time, then read back)."""
    mixture = random_mixture(seed, workers, served, args.requests_per_worker, args.flood_load)
    trace, path = saved_trace(mixture.spec.name, mixture.spec, seed, traces_dir(args.out))
    cost = cost_model(args.cost)
    within, flood = set(mixture.within_share()), set(mixture.flooders())
    local = LOCAL_FOR_ROUTING[routing]
    policy, overrides = routing_settings(routing)
    result, wall = run(trace, cost, local, workers=workers, routing=policy, routing_overrides=overrides)
    e2e = {"within": [], "flood": []}
    for f in result.recorder.finished:
        group = "within" if f.client_id in within else "flood" if f.client_id in flood else None
        if group:
            e2e[group].append(f.finished - f.arrival)
    summary = summarize(result)
    row = {
        "seed": seed,
        "workers": workers,
        "routing": routing,
        "local": local,
        "clients": len(trace.clients),
        "flooders": len(flood),
        "requests": len(trace.requests),
        "offered_load": mixture.offered_load,
        "within_p99": percentile(e2e["within"], 99),
        "within_p50": percentile(e2e["within"], 50),
        "flood_p99": percentile(e2e["flood"], 99),
        "hit_rate": summary["hit_rate"],
        "throughput_tok_s": summary["throughput_tok_s"],
        "trace": path.name,
        "sim_wall_s": wall,
    }
    print(
        f"seed {seed} {workers:3d}w {routing:18s} within_p99={row['within_p99']:7.2f}s "
        f"flood_p99={row['flood_p99']:7.2f}s hit={summary['hit_rate']:.2f} wall={wall:5.1f}s",
        file=sys.stderr,
    )
    return row


def run_all(args: argparse.Namespace, served: float) -> list[dict[str, Any]]:
    """Every (workers, seed, policy) run, in that order. With ``--jobs`` above 1 they run in that many
    processes (the simulator is single-threaded); each seed's trace is written first, once, so no two
    processes write one file."""
    jobs = [
        (seed, workers, routing)
        for workers in args.workers
        for seed in args.seeds
        for routing in args.policies
    ]
    for workers in args.workers:
        for seed in args.seeds:
            mixture = random_mixture(seed, workers, served, args.requests_per_worker, args.flood_load)
            saved_trace(mixture.spec.name, mixture.spec, seed, traces_dir(args.out))
    if args.jobs <= 1:
        return [run_policy(*job, args, served) for job in jobs]
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(run_policy, *job, args, served) for job in jobs]
        try:
            return [future.result() for future in futures]
        except BaseException:
            pool.shutdown(cancel_futures=True)  # a failed run is said now, not after every other one
            raise


def ratios(mine: list[dict[str, Any]], base: dict[int, dict[str, Any]], prefix: str) -> dict[str, Any]:
    """Per seed against the baseline run of the same seed: its within-share and flooder p99 over this
    policy's (above 1: this policy is better) and this policy's hit rate over its; median and the
    seed least favourable to this policy."""
    paired = [(r, base[r["seed"]]) for r in mine if r["seed"] in base]
    within = [b["within_p99"] / r["within_p99"] for r, b in paired]
    flood = [b["flood_p99"] / r["flood_p99"] for r, b in paired]
    hit = [r["hit_rate"] / max(b["hit_rate"], 1e-9) for r, b in paired]
    if not paired:
        return {}
    return {
        f"{prefix}_over_this_within_p99_median": float(np.median(within)),
        f"{prefix}_over_this_within_p99_worst": min(within),
        f"{prefix}_over_this_flood_p99_median": float(np.median(flood)),
        f"hit_rate_vs_{prefix}_median": float(np.median(hit)),
        f"hit_rate_vs_{prefix}_worst": min(hit),
    }


def aggregate(runs: list[dict[str, Any]], baselines: tuple[str, ...] = BASELINES) -> list[dict[str, Any]]:
    """Median and worst seed per (workers, policy); ratios against each baseline on the same seed."""
    out = []
    for workers in dict.fromkeys(r["workers"] for r in runs):
        here = [r for r in runs if r["workers"] == workers]
        for routing in dict.fromkeys(r["routing"] for r in here):
            mine = [r for r in here if r["routing"] == routing]
            within = [r["within_p99"] for r in mine]
            flood = [r["flood_p99"] for r in mine]
            hit = [r["hit_rate"] for r in mine]
            row = {
                "workers": workers,
                "routing": routing,
                "seeds": len(mine),
                "within_p99_median": float(np.median(within)),
                "within_p99_worst": max(within),
                "flood_p99_median": float(np.median(flood)),
                "flood_p99_worst": max(flood),
                "hit_rate_median": float(np.median(hit)),
                "hit_rate_worst": min(hit),
            }
            for baseline in baselines:
                base = {r["seed"]: r for r in here if r["routing"] == baseline}
                row.update(ratios(mine, base, baseline))
            out.append(row)
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cost", default="h100_7b_analytic")
    parser.add_argument("--workers", nargs="*", type=int, default=[4, 16, 64])
    parser.add_argument("--seeds", nargs="*", type=int, default=list(SEEDS))
    parser.add_argument(
        "--policies", nargs="*", default=list(POLICIES), choices=[*ROUTING_POLICIES, *ROUTING_VARIANTS]
    )
    parser.add_argument("--requests-per-worker", type=int, default=30)
    parser.add_argument(
        "--flood-load",
        type=float,
        default=None,
        help="heavy flood: scale the flooders to offer this many times the cluster's capacity in all",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="processes to run the (seed, policy) runs in; results do not depend on it",
    )
    parser.add_argument("--name", default="")
    parser.add_argument("--out", type=Path, default=None, help="results directory (default bench/results/)")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    complete = bool(args.name) or (set(POLICIES) <= set(args.policies) and set(SEEDS) <= set(args.seeds))
    out = output_dir(args.out, complete)
    served, _ = capacity("heavy_client", cost_model(args.cost), traces_dir(args.out))
    runs = run_all(args, served)
    rows = aggregate(runs)
    columns = [
        "workers",
        "routing",
        "seeds",
        "within_p99_median",
        "within_p99_worst",
        "flood_p99_median",
        "flood_p99_worst",
        "hit_rate_median",
        "hit_rate_worst",
        *(
            f"{b}_over_this_{m}"
            for b in BASELINES
            for m in ("within_p99_median", "within_p99_worst", "flood_p99_median")
        ),
        *(f"hit_rate_vs_{b}_worst" for b in BASELINES),
    ]
    notes = " ".join(
        [
            "Randomised mixtures (bench/workloads/mixtures.py), seeds",
            f"{args.seeds} fixed before any tuning, ~{args.requests_per_worker} requests per worker,",
            f"cost model `{args.cost}`, simulated (real engines, real router policies).",
            "within_p99: p99 end-to-end latency (s) of all requests of the clients within their fair",
            "share (every client but the flooders), pooled; flood_p99 likewise for the flooders.",
            "median/worst over seeds (worst: highest latency, lowest hit rate). X_over_this: baseline",
            "X's p99 over this policy's on the same seed (above 1: this policy is better; _worst is the",
            "seed least favourable to it), X being cache_aware (ours) or cache_aware_sglang (the SGLang",
            "router's default thresholds). hit_rate_vs_X_worst: the lowest ratio of this policy's hit",
            "rate to X's on one seed. d2lpm_gated: D2LPM with late binding, 32 requests in flight per",
            "worker. Per-seed runs are in the JSON's `runs`.",
            f"Heavy flood: the flooders offer {args.flood_load:g}x the cluster's capacity in all."
            if args.flood_load
            else "",
        ]
    )
    write_results(
        f"eval_mixtures_{args.cost}{args.name}",
        rows,
        columns,
        {"cost": args.cost, "capacity_rps": served, "args": vars(args), "runs": runs},
        notes,
        results_dir=out,
    )


if __name__ == "__main__":
    main()
