"""What DLPM's parked-with-credit stop costs on one worker: the same traces under several trees (issue 13).

5138e56 and 8363561 made a DLPM pass that admitted nobody stop, without rule 4's refill, when a client
with credit was skipped only because its request is parked behind a running leader's prefix (rule 6,
the in-batch prefix hold). That restored the fairness bound; the price is that such a step may leave
running slots idle while the parked requests wait up to one prefill for their leader's pages. This
script measures that price: each ``--tree LABEL=REV[,PATH@REV2...]`` is ``git archive``d into a
temporary directory (with PATH as at REV2) and simulated there, in its own process whose engine and
bench packages are that tree's (the shared package and the router come from this checkout; the
simulator runs no router on one worker). The first tree is the baseline the others' per-seed ratios
are taken against. By default (TREES): the fix's parent, HEAD with only dlpm.py as in the fix's
parent (the fix alone, apart from every other change since), and HEAD.

Workloads: eval_single_worker.py's eight patterns (one worker, 32 running requests, 2048-token steps,
768 KV pages, default DLPM at Q 8192, ~400 requests offered at 1.3x LPM's capacity of the pattern),
each generated on every seed of eval_returning_turns.py (eval_mixtures.py's seven and three fresh
ones, all fixed before these runs). Traces are saved under bench/results/eval_traces/ (git-ignored),
keyed by their spec and seed, and every tree replays the same files.

    .venv/bin/python bench/eval/eval_dlpm_parked_credit_cost.py --cost cpu

Writes bench/results/eval_dlpm_parked_credit_cost_<cost>.{json,md} (``_q<Q>`` added for a quantum
other than 8192), or under ``--out DIR``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]
SEEDS = (1101, 2203, 3307, 4409, 5501, 6607, 7703, 9001, 9002, 9003)  # eval_returning_turns' defaults
# eval_single_worker's patterns, written out: this process imports no engine (each tree runs in a
# process of its own), and eval_single_worker imports the simulator; a test holds the two equal.
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
# The baseline: HEAD with only dlpm.py as in the fix's parent (the fix alone, apart from every other
# change since; dlpm.py has had no other change). HEAD. The fix's parent itself, whose ratios add every
# other engine change since (context, not the fix's cost).
TREES = (
    "before=HEAD,engine/src/radixfair_engine/scheduler/dlpm.py@5138e56^",
    "after=HEAD",
    "fix_parent=5138e56^",
)
# Summary fields kept per run (bench/simulator/metrics.py summarize).
RUN_FIELDS = (
    "throughput_tok_s",
    "hit_rate",
    "worst_client_e2e_p99",
    "worst_client_ttft_p99",
    "ttft_p99",
    "service_gap",
    "gap_bound",
    "gap_over_bound",
    "jain",
    "preemptions",
    "steps",
)


def worker(tree: Path, cost_name: str, quantum: float, patterns: list[str], seeds: list[int], traces: Path):
    """Simulates every (pattern, seed) with the code of ``tree`` (first on sys.path); returns run records."""
    import radixfair_engine

    engine_file = Path(radixfair_engine.__file__).resolve()
    if tree.resolve() not in engine_file.parents:
        raise RuntimeError(f"engine imported from {engine_file}, not from the tree {tree}")
    from bench.eval.eval_runs import cost_model, run, saved_trace
    from bench.eval.eval_single_worker import _params, capacity
    from bench.simulator.metrics import summarize
    from bench.workloads import build_pattern

    cost = cost_model(cost_name)
    runs = []
    for pattern in patterns:
        served, per_unit = capacity(pattern, cost, traces)
        spec = build_pattern(pattern, _params(pattern, 1.3 * served / per_unit, 400 / (1.3 * served)))
        for seed in seeds:
            trace, path = saved_trace(f"single_{pattern}_{cost_name}", spec, seed, traces)
            result, wall = run(trace, cost, "dlpm", quantum=quantum)
            s = summarize(result)
            runs.append(
                {"pattern": pattern, "seed": seed, "trace": path.name, "lpm_capacity_rps": served}
                | {k: s[k] for k in RUN_FIELDS}
                | {"sim_wall_s": wall}
            )
            print(
                f"{tree.name} {pattern:22s} {seed} thr={s['throughput_tok_s']:.0f} hit={s['hit_rate']:.3f} "
                f"p99={s['worst_client_e2e_p99']:.2f} gap/bound={s['gap_over_bound']:.2f} wall={wall:.1f}s",
                file=sys.stderr,
                flush=True,
            )
    return runs


def resolved(spec: str) -> str:
    """``spec`` (``REV[,PATH@REV2...]``) with every revision as its commit's short hash, so a tree means
    one commit however the branch moves while the others run."""
    rev, *overlays = spec.split(",")
    parts = [_short(rev)]
    for overlay in overlays:
        path, other = overlay.rsplit("@", 1)
        parts.append(f"{path}@{_short(other)}")
    return ",".join(parts)


def archived(label: str, spec: str, into: Path) -> tuple[Path, str]:
    """The tree a ``resolved`` ``spec`` names, extracted under ``into``; returns it and what it is.

    ``spec`` is ``COMMIT`` or ``COMMIT,PATH@COMMIT2,...``: ``git archive`` of COMMIT, with each PATH as
    it is at COMMIT2 (one file changed against a commit, to isolate it from everything else between
    two commits).
    """
    commit, *overlays = spec.split(",")
    tree = into / label
    tree.mkdir()
    archive = subprocess.run(["git", "archive", commit], cwd=REPO, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    what = commit
    for overlay in overlays:
        path, other = overlay.rsplit("@", 1)
        text = subprocess.run(["git", "show", f"{other}:{path}"], cwd=REPO, check=True, capture_output=True)
        (tree / path).write_bytes(text.stdout)
        what += f"+{Path(path).name}@{other}"
    return tree, what


def _short(rev: str) -> str:
    parse = ["git", "rev-parse", "--short", f"{rev}^{{commit}}"]
    return subprocess.run(parse, cwd=REPO, check=True, capture_output=True, text=True).stdout.strip()


def run_tree(tree: Path, args: argparse.Namespace, traces: Path) -> list[dict[str, Any]]:
    """Runs ``worker`` in a fresh interpreter whose engine and bench packages are ``tree``'s."""
    out = tree / "runs.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree / "engine" / "src"), str(tree)])}
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", str(tree), "--runs-json", str(out)]
    command += ["--cost", args.cost, "--quantum", str(args.quantum), "--traces", str(traces)]
    command += ["--patterns", *args.patterns, "--seeds", *map(str, args.seeds)]
    subprocess.run(command, env=env, check=True, cwd=tree)
    return json.loads(out.read_text())


def table(runs: list[dict[str, Any]], labels: list[str], patterns: list[str]) -> list[dict[str, Any]]:
    """One row per (pattern, tree): medians and worst seeds, and per-seed ratios to the first tree."""
    rows = []
    for pattern in patterns:
        base = {r["seed"]: r for r in runs if r["tree"] == labels[0] and r["pattern"] == pattern}
        for label in labels:
            own = [r for r in runs if r["tree"] == label and r["pattern"] == pattern]
            thr = [r["throughput_tok_s"] for r in own]
            hit = [r["hit_rate"] for r in own]
            p99 = [r["worst_client_e2e_p99"] for r in own]
            gap = [r["gap_over_bound"] for r in own]
            thr_ratio = [r["throughput_tok_s"] / base[r["seed"]]["throughput_tok_s"] for r in own]
            hit_ratio = [
                r["hit_rate"] / base[r["seed"]]["hit_rate"] for r in own if base[r["seed"]]["hit_rate"]
            ]
            p99_ratio = [r["worst_client_e2e_p99"] / base[r["seed"]]["worst_client_e2e_p99"] for r in own]
            rows.append(
                {
                    "pattern": pattern,
                    "tree": label,
                    "commit": own[0]["commit"],
                    "seeds_changed": sum(_changed(r, base[r["seed"]]) for r in own),
                    "thr_median_tok_s": float(np.median(thr)),
                    "thr_worst_tok_s": min(thr),
                    "thr_ratio_median": float(np.median(thr_ratio)),
                    "thr_ratio_worst": min(thr_ratio),
                    "hit_median": float(np.median(hit)),
                    "hit_worst": min(hit),
                    "hit_ratio_median": float(np.median(hit_ratio)) if hit_ratio else None,
                    "hit_ratio_worst": min(hit_ratio) if hit_ratio else None,
                    "worst_client_p99_median_s": float(np.median(p99)),
                    "worst_client_p99_worst_s": max(p99),
                    "p99_ratio_median": float(np.median(p99_ratio)),
                    "p99_ratio_worst": max(p99_ratio),
                    "gap_over_bound_median": float(np.median(gap)),
                    "gap_over_bound_worst": max(gap),
                }
            )
    return rows


# The per-seed figures the committed page keeps, one list per pattern, tree and figure.
PER_SEED = ("throughput_tok_s", "hit_rate", "worst_client_e2e_p99", "gap_over_bound")


def per_seed(runs: list[dict[str, Any]], labels: list[str], patterns: list[str], seeds: list[int]):
    """{pattern: {tree: {figure: [value per seed, in the order of ``seeds``]}}} for PER_SEED."""
    by = {(r["pattern"], r["tree"], r["seed"]): r for r in runs}
    return {p: {t: {f: [by[p, t, s][f] for s in seeds] for f in PER_SEED} for t in labels} for p in patterns}


def _changed(run: dict[str, Any], base: dict[str, Any]) -> bool:
    return any(run[k] != base[k] for k in ("throughput_tok_s", "hit_rate", "steps", "worst_client_e2e_p99"))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cost", default="cpu")
    parser.add_argument("--quantum", type=float, default=8192.0)
    parser.add_argument(
        "--tree", action="append", default=None, help="LABEL=REV[,PATH@REV2...] (default: see TREES)"
    )
    parser.add_argument("--patterns", nargs="*", default=list(PATTERNS))
    parser.add_argument("--seeds", nargs="*", type=int, default=list(SEEDS))
    parser.add_argument("--out", type=Path, default=None, help="results directory (default bench/results)")
    parser.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--runs-json", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--traces", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        runs = worker(args.worker, args.cost, args.quantum, args.patterns, args.seeds, args.traces)
        args.runs_json.write_text(json.dumps(runs))
        return
    sys.path.insert(0, str(REPO))
    from bench.report import RESULTS_DIR, write_results

    out = args.out or RESULTS_DIR
    traces = (out / "eval_traces").resolve()
    asked = [t.split("=", 1) for t in (args.tree or TREES)]
    trees = [(label, resolved(spec)) for label, spec in asked]
    runs: list[dict[str, Any]] = []
    commits = {}
    with tempfile.TemporaryDirectory(prefix="dlpm_parked_credit_") as scratch:
        for label, spec in trees:
            tree, commits[label] = archived(label, spec, Path(scratch))
            runs += [{"tree": label, "commit": commits[label], **r} for r in run_tree(tree, args, traces)]
    labels = [label for label, _ in trees]
    rows = table(runs, labels, args.patterns)
    first = labels[0]
    notes = (
        f"One simulated worker (real Engine and DLPM policy of each tree), cost model `{args.cost}`, default "
        f"DLPM at Q {args.quantum:g}, 32 running requests, 2048-token steps, KV 768 pages x 16 tokens; each "
        "pattern offered at 1.3x LPM's capacity, ~400 requests, on seeds "
        f"{args.seeds} (fixed before these runs). Trees: "
        + ", ".join(f"`{label}` = {spec} ({commits[label]})" for label, spec in asked)
        + f". Every tree replays the same saved traces. Ratios are per seed against `{first}` on the same "
        "trace, then median and worst over seeds (throughput and hit rate: worst is the smallest; "
        "worst-client e2e p99 (s, virtual time) and its ratio: worst is the largest; a ratio above 1 is "
        "slower). gap_over_bound: the page's fairness figure, the worst swing of the weight-normalised "
        "service difference of two tracked backlogged clients over DLPM's bound for that pair (above 1 "
        "breaks the bound). seeds_changed: seeds on which any of throughput, hit rate, step count or "
        "worst-client p99 differs from the first tree's (0: the change never acted on that pattern). "
        "Per-seed values (in the order of `seeds`) are in the JSON's `per_seed`; every run's record in "
        "raw/ (git-ignored; the command writes it again)."
    )
    if args.tree is None:
        notes += (
            " `after` against `before` is the fix (5138e56, 8363561) alone: the two trees differ in "
            "dlpm.py only. `fix_parent`'s ratios add every other engine change between the fix's parent "
            "and HEAD, so they are context, not the fix's cost."
        )
    suffix = "" if args.quantum == 8192.0 else f"_q{args.quantum:g}"  # the default Q's page keeps its name
    write_results(
        f"eval_dlpm_parked_credit_cost_{args.cost}{suffix}",
        rows,
        list(rows[0]),
        {
            "cost": args.cost,
            "trees": dict(asked),
            "commits": commits,
            "seeds": args.seeds,
            "per_seed": per_seed(runs, labels, args.patterns, args.seeds),
            "runs": runs,
        },
        notes,
        raw_meta_keys=("runs",),
        results_dir=out,
    )


if __name__ == "__main__":
    main()
