"""N workers behind the router: round-robin, least-load, cache-aware, global VTC and D2LPM, simulated.

The workload is the heavy-client pattern scaled with N: N/8 heavy clients
each offering about two workers' worth of requests, next to
``--clients-per-worker`` x N light clients, each with its own document;
together ``--load`` of the cluster's capacity (a worker's capacity is
piloted as in eval_single_worker.py). Every routing policy replays the same
saved trace through the router's real policy, cache view and in-process
ledger, in front of real engines (see bench/simulator/).

    .venv/bin/python bench/eval/eval_multi_worker.py --cost cpu --workers 8 16 32 64 128 256

Writes bench/results/eval_multi_worker_<cost><name>.{json,md}. A run of a subset
of the routing policies without ``--name`` goes to bench/results/raw/partial/
(git-ignored), so it never overwrites a tracked page; ``--out DIR`` writes
there instead (and keeps its traces in DIR/eval_traces/).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.eval.eval_runs import (  # noqa: E402
    LOCAL_FOR_ROUTING,
    RAW_RECORD_KEYS,
    ROUTING_POLICIES,
    ROUTING_VARIANTS,
    TRACES,
    cost_model,
    output_dir,
    routing_settings,
    run,
    run_record,
    saved_trace,
    traces_dir,
)
from bench.eval.eval_single_worker import capacity  # noqa: E402
from bench.report import write_results  # noqa: E402
from bench.workloads import build_pattern  # noqa: E402
from bench.workloads.trace import Trace  # noqa: E402

HEAVY_WORKERS = 2.0  # a heavy client offers this many workers' capacity


def cluster_trace(
    workers: int,
    cost_name: str,
    load: float,
    per_worker: int,
    clients_per_worker: int,
    pattern: str = "heavy_client",
    heavy_workers: float = HEAVY_WORKERS,
    traces: Path = TRACES,
) -> tuple[Trace, Path]:
    served, _ = capacity(pattern, cost_model(cost_name), traces)
    heavy = max(1, workers // 8)
    light = clients_per_worker * workers
    total = load * workers * served
    light_rate = (total - heavy * heavy_workers * served) / light
    duration = per_worker / (load * served)
    spec = build_pattern(
        pattern,
        {
            "num_light": light,
            "num_heavy": heavy,
            "rate": light_rate,
            "heavy_factor": heavy_workers * served / light_rate,
            "duration_s": duration,
            "doc_tokens": 2048,
        },
    )
    prefix = "multi_heavy" if pattern == "heavy_client" else f"multi_{pattern}"
    name = f"{prefix}_{workers}w_{clients_per_worker}cpw_load{load:g}_{per_worker}rpw_{cost_name}"
    if heavy_workers != HEAVY_WORKERS:
        name += f"_heavy{heavy_workers:g}"
    return saved_trace(name, spec, 1, traces)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cost", default="cpu")
    parser.add_argument("--workers", nargs="*", type=int, default=[8, 16, 32, 64, 128, 256])
    parser.add_argument(
        "--policies",
        nargs="*",
        default=list(ROUTING_POLICIES),
        choices=[*ROUTING_POLICIES, *ROUTING_VARIANTS],
    )
    parser.add_argument("--load", type=float, default=0.8)
    parser.add_argument("--requests-per-worker", type=int, default=100)
    parser.add_argument("--clients-per-worker", type=int, default=10)
    parser.add_argument("--quantum", type=float, default=8192.0, help="local DLPM quantum")
    parser.add_argument("--router-quantum", type=float, default=8192.0)
    parser.add_argument(
        "--heavy-workers", type=float, default=HEAVY_WORKERS, help="a heavy client's offer, in workers"
    )
    parser.add_argument("--name", default="")
    parser.add_argument("--pattern", default="heavy_client", choices=["heavy_client", "hot_prefix"])
    parser.add_argument("--out", type=Path, default=None, help="results directory (default: see above)")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    out = output_dir(args.out, bool(args.name) or set(ROUTING_POLICIES) <= set(args.policies))
    cost = cost_model(args.cost)
    records = []
    for workers in args.workers:
        trace, path = cluster_trace(
            workers,
            args.cost,
            args.load,
            args.requests_per_worker,
            args.clients_per_worker,
            args.pattern,
            args.heavy_workers,
            traces_dir(args.out),
        )
        for routing in args.policies:
            local = LOCAL_FOR_ROUTING[routing]
            policy, overrides = routing_settings(routing)
            result, wall = run(
                trace,
                cost,
                local,
                quantum=args.quantum,
                workers=workers,
                routing=policy,
                router_quantum=args.router_quantum,
                routing_overrides=overrides,
            )
            record = run_record(result, wall, workers=workers, routing=routing, local=local, trace=path.name)
            light = [v["e2e_p99"] for c, v in record["clients"].items() if c.startswith("light")]
            heavy = [v["e2e_p99"] for c, v in record["clients"].items() if c.startswith("heavy")]
            record["worst_light_e2e_p99"] = max(light)
            record["worst_heavy_e2e_p99"] = max(heavy)
            record["light_e2e_p99_median"] = float(np.median(light))
            record["clients_total"] = len(trace.clients)
            record["requests_total"] = len(trace.requests)
            if workers > 32:
                record.pop("clients")  # thousands of clients: keep the file small
            records.append(record)
            print(
                f"{workers:4d}w {routing:12s} thr={record['throughput_tok_s']:10.1f} "
                f"hit={record['hit_rate']:.2f} worst_p99={record['worst_client_e2e_p99']:8.2f}s "
                f"light_p99={record['worst_light_e2e_p99']:8.2f}s imb={record['load_imbalance']:.2f} "
                f"wall={wall:6.1f}s",
                file=sys.stderr,
            )
    columns = [
        "workers",
        "routing",
        "local",
        "clients_total",
        "requests_total",
        "throughput_tok_s",
        "hit_rate",
        "worst_client_e2e_p99",
        "worst_light_e2e_p99",
        "worst_heavy_e2e_p99",
        "ttft_p99",
        "jain",
        "load_imbalance",
        "sim_wall_s",
    ]
    notes = (
        f"Simulated cluster (real Engine per worker, the router's real policies, cache view and "
        f"in-process ledger; cost model `{args.cost}`). Heavy-client pattern: N/8 heavy clients at "
        f"{args.heavy_workers:g} workers' capacity each, {args.clients_per_worker} light clients per worker, "
        f"offered load {args.load} of the cluster, ~{args.requests_per_worker} requests per worker. "
        f"Local DLPM quantum {args.quantum:g}, router quantum {args.router_quantum:g}. "
        "Latencies in seconds of virtual time; load_imbalance = max/mean busy time over workers."
    )
    write_results(
        f"eval_multi_worker_{args.cost}{args.name}",
        records,
        columns,
        {"cost": args.cost, "cost_model": cost.__dict__, "args": vars(args)},
        notes,
        raw_row_keys=RAW_RECORD_KEYS,
        results_dir=out,
    )


if __name__ == "__main__":
    main()
