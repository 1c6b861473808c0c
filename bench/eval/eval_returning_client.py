"""A weight-2 client that goes idle and comes back, on one overloaded worker: how long it waits (issue 13).

Six weight-1 clients, each on its own 2,048-token document, keep one worker
backlogged (together ``--load`` times what LPM serves on the shared-prefix
pattern). A weight-2 client on its own document sends at the same rate as
each of them, except in [``--pause-from``, ``--pause-to``): it goes idle and
comes back. Every local policy replays the same trace. Reported per policy
and seed: the wait (release to admission) of the returning client's first
request after it is back, its TTFT, and over the ``--window`` seconds after
its return its service over its weighted share of the worker's (weight 2 of
8; above 1 means more than its share). Seeds are eval_mixtures.py's fixed ones.

    .venv/bin/python bench/eval/eval_returning_client.py

Writes bench/results/eval_returning_client_<cost><name>.{json,md}; ``--out DIR`` writes there instead.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.eval.eval_mixtures import SEEDS  # noqa: E402
from bench.eval.eval_runs import cost_model, output_dir, run, saved_trace, traces_dir  # noqa: E402
from bench.eval.eval_single_worker import capacity  # noqa: E402
from bench.report import write_results  # noqa: E402
from bench.workloads.clients import ClientSpec  # noqa: E402
from bench.workloads.distributions import Constant, Poisson, Uniform  # noqa: E402
from bench.workloads.spec import WorkloadSpec  # noqa: E402

POLICIES = ("vtc", "dlpm", "dlpm_turns", "dlpm_turns_p8", "dlpm_cap", "dlpm_reset")
RETURNING = "returning"


def workload(rate: float, duration: float, pause: tuple[float, float]) -> WorkloadSpec:
    """Six backlogged weight-1 clients and the weight-2 client that pauses; ``rate`` per client."""

    def client(name: str, weight: float = 1.0, paused: tuple[float, float] | None = None) -> ClientSpec:
        return ClientSpec(name, Poisson(rate), Uniform(16, 64), Constant(64), weight, 2048, pause=paused)

    clients = tuple(client(f"busy{i}") for i in range(6)) + (client(RETURNING, 2.0, pause),)
    return WorkloadSpec("returning_client", duration, clients)


def measure(result, pause_to: float, window: float) -> dict[str, Any]:
    finished = result.recorder.finished
    back = sorted(
        (f for f in finished if f.client_id == RETURNING and f.arrival >= pause_to), key=lambda f: f.arrival
    )
    first = back[0]
    # Requests it sent before the pause and still had waiting when it came back: then it did not
    # return from idle, and its first request after the pause queues behind its own.
    backlog = sum(
        1
        for f in finished
        if f.client_id == RETURNING and f.arrival < pause_to and f.admitted > first.arrival
    )
    service = result.recorder.service
    lo, hi = int(pause_to / service.bin_s), int((pause_to + window) / service.bin_s)
    per_client = {c: service.values[row, lo:hi].sum() for c, row in service.index.items()}
    weights = result.recorder.weights
    share = weights[RETURNING] / sum(weights.values())
    total = sum(per_client.values())
    return {
        "first_wait_s": first.admitted - first.arrival,
        "waiting_at_return": backlog,
        "first_ttft_s": first.first_token - first.arrival,
        "share_after_return": per_client.get(RETURNING, 0.0) / (share * total) if total else float("nan"),
        "busy_e2e_p99": float(
            np.percentile([f.finished - f.arrival for f in finished if f.client_id != RETURNING], 99)
        ),
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cost", default="h100_7b_analytic")
    parser.add_argument("--load", type=float, default=1.3)
    parser.add_argument("--duration", type=float, default=6.0)
    parser.add_argument("--pause-from", type=float, default=2.0)
    parser.add_argument("--pause-to", type=float, default=4.0)
    parser.add_argument("--window", type=float, default=1.5, help="seconds after the return the share covers")
    parser.add_argument("--quantum", type=float, default=8192.0)
    parser.add_argument("--seeds", nargs="*", type=int, default=list(SEEDS))
    parser.add_argument("--policies", nargs="*", default=list(POLICIES))
    parser.add_argument("--name", default="")
    parser.add_argument("--out", type=Path, default=None)
    return parser


def main() -> None:
    args = build_parser().parse_args()
    out = output_dir(args.out, bool(args.name) or set(POLICIES) <= set(args.policies))
    cost = cost_model(args.cost)
    served, _ = capacity("shared_prefix", cost, traces_dir(args.out))
    # The busy clients and the returning one send at one rate; weight-1 clients make up 6 of the 7 senders.
    rate = args.load * served / 7
    spec = workload(rate, args.duration, (args.pause_from, args.pause_to))
    runs = []
    for seed in args.seeds:
        trace, path = saved_trace(f"returning_client_{args.cost}", spec, seed, traces_dir(args.out))
        for policy in args.policies:
            result, wall = run(trace, cost, policy, quantum=args.quantum)
            record = {"seed": seed, "policy": policy, **measure(result, args.pause_to, args.window)}
            record["sim_wall_s"] = wall
            runs.append(record)
            print(
                f"seed {seed} {policy:10s} wait={record['first_wait_s']:.3f}s "
                f"share={record['share_after_return']:.2f}",
                file=sys.stderr,
            )
    rows = []
    for policy in args.policies:
        mine = [r for r in runs if r["policy"] == policy]
        waits = [r["first_wait_s"] for r in mine]
        idle = [r["first_wait_s"] for r in mine if not r["waiting_at_return"]]
        shares = [r["share_after_return"] for r in mine]
        rows.append(
            {
                "policy": policy,
                "seeds": len(mine),
                "first_wait_median_s": float(np.median(waits)),
                "first_wait_worst_s": max(waits),
                "seeds_idle_at_return": len(idle),
                "first_wait_idle_median_s": float(np.median(idle)) if idle else float("nan"),
                "first_wait_idle_worst_s": max(idle, default=float("nan")),
                "share_median": float(np.median(shares)),
                "share_worst": min(shares),
                "busy_e2e_p99_median_s": float(np.median([r["busy_e2e_p99"] for r in mine])),
            }
        )
    notes = (
        f"One simulated worker (cost model `{args.cost}`), six weight-1 clients and one weight-2 client on "
        f"their own 2,048-token documents, {args.load}x what LPM serves; the weight-2 client is idle in "
        f"[{args.pause_from}, {args.pause_to}) s. first_wait: release to admission of its first request "
        f"after it is back; share: its service over its weighted share (2/8) of all service in the "
        f"{args.window} s after its return. median/worst over seeds {args.seeds} (worst: longest wait, "
        "smallest share). _idle columns: only the seeds on which it had nothing waiting when it came "
        "back (on the others its earlier requests were still queued, so it did not return from idle). "
        "dlpm is the default (idle rule lift, rule 7 off); dlpm_turns has rule 7 on (a returning client's "
        "turn, max_client_passes 0), dlpm_turns_p8 with 8 admissions before the turn; dlpm_cap and "
        "dlpm_reset the other idle rules. "
        "Per-seed runs are in the JSON's `runs`."
    )
    write_results(
        f"eval_returning_client_{args.cost}{args.name}",
        rows,
        list(rows[0]),
        {"cost": args.cost, "capacity_rps": served, "args": vars(args), "runs": runs},
        notes,
        results_dir=out,
    )


if __name__ == "__main__":
    main()
