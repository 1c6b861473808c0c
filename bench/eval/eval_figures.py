"""The evaluation's figures, from the saved run records, or re-simulated from the saved traces.

    .venv/bin/python bench/eval/eval_figures.py FIGURE [--cost cpu] [--rerun]

FIGURE is one of: service_over_time, throughput_vs_fairness, p99_per_client,
hit_rate_vs_workers, quantum_sweep, or all. Without --rerun the figure is
drawn from the records of bench/results/raw/eval_<experiment>_<cost>.json
(the full records the experiment's script writes, git-ignored), or, where
that file is absent, from the committed summary; the service-over-time
figure needs the full records (or --rerun). With --rerun every
run the figure needs is simulated again from the trace file its record
names (bench/results/eval_traces/), with the record's policy settings, and
the figure is drawn from those fresh records. Writes
bench/results/eval_fig_<figure>_<cost>.png.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.eval.eval_runs import TRACES, cost_model, routing_settings, run, run_record  # noqa: E402
from bench.report import RAW_DIR, RESULTS_DIR  # noqa: E402
from bench.workloads import load_trace  # noqa: E402

# A policy with no colour of its own here (one just added to a registry) draws in cyan.
POLICY_COLORS: defaultdict[str, str] = defaultdict(
    lambda: "tab:cyan",
    {
        "fcfs": "tab:gray",
        "lpm": "tab:orange",
        "lpm_aging": "tab:brown",
        "vtc": "tab:blue",
        "dlpm": "tab:green",
        "round_robin": "tab:gray",
        "least_load": "tab:purple",
        "cache_aware": "tab:orange",
        "global_vtc": "tab:blue",
        "d2lpm": "tab:green",
        "cache_aware_sglang": "tab:red",
        "d2lpm_reset": "tab:olive",
        "dlpm_reset": "tab:olive",
    },
)


def records_path(experiment: str, cost: str) -> Path:
    """The full records (raw/, git-ignored) where they exist, else the committed summary."""
    name = f"eval_{experiment}_{cost}.json"
    return RAW_DIR / name if (RAW_DIR / name).exists() else RESULTS_DIR / name


def rerun(records: list[dict[str, Any]], cost: str, meta: dict[str, Any]) -> list[dict[str, Any]]:
    """Simulates each record's run again from its saved trace."""
    model = cost_model(cost)
    fresh = []
    for record in records:
        trace = load_trace(TRACES / record["trace"])
        labels = {
            k: record[k]
            for k in ("pattern", "policy", "workers", "routing", "local", "quantum")
            if k in record
        }
        if "routing" in record:
            policy, overrides = routing_settings(record["routing"])
            result, wall = run(
                trace,
                model,
                record["local"],
                quantum=meta["quantum"],
                workers=record["workers"],
                routing=policy,
                router_quantum=meta["router_quantum"],
                routing_overrides=overrides,
            )
        else:
            result, wall = run(trace, model, record["policy"], quantum=record.get("quantum", meta["quantum"]))
        fresh.append(run_record(result, wall, trace=record["trace"], **labels))
    return fresh


def service_over_time(records: list[dict[str, Any]], pattern: str, out: Path) -> None:
    runs = [r for r in records if r.get("pattern") == pattern]
    fig, axes = plt.subplots(1, len(runs), figsize=(3.2 * len(runs), 3.2), sharey=True, squeeze=False)
    for ax, record in zip(axes[0], runs):
        if "service_series" not in record:
            raise SystemExit(
                "the service series are in bench/results/raw/ (git-ignored): run the experiment's "
                "command from its results page first, or pass --rerun"
            )
        series = record["service_series"]
        data = np.array(series["cumulative"])
        t = np.arange(data.shape[1]) * series["bin_s"]
        for i, client in enumerate(series["clients"]):
            ax.plot(t, data[i] / series["weights"][i], lw=1.2, label=client)
        ax.set_title(f"{record['policy']}\nJain {record['jain']:.2f}", fontsize=9)
        ax.set_xlabel("virtual time (s)")
    axes[0][0].set_ylabel("service / weight (weighted tokens)")
    axes[0][-1].legend(fontsize=6, ncol=2, loc="upper left")
    fig.suptitle(f"Service received over time per client, one worker, {pattern}", fontsize=10)
    _save(fig, out)


def throughput_vs_fairness(records: list[dict[str, Any]], out: Path) -> None:
    # Patterns where no two clients were ever backlogged together have no Jain index: left out.
    patterns = [
        p
        for p in dict.fromkeys(r["pattern"] for r in records)
        if any(r["pattern"] == p and r["jain"] == r["jain"] for r in records)
    ]
    cols = min(4, len(patterns))
    rows = -(-len(patterns) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 3.0 * rows), squeeze=False)
    for ax in axes.flat[len(patterns) :]:
        ax.set_visible(False)
    for ax, pattern in zip(axes.flat, patterns):
        for record in (r for r in records if r["pattern"] == pattern):
            policy = record["policy"]
            ax.scatter(
                record["jain"], record["throughput_tok_s"], color=POLICY_COLORS[policy], s=40, label=policy
            )
        ax.set_title(pattern, fontsize=9)
        ax.set_xlabel("Jain's index (backlogged clients)")
        ax.set_ylim(bottom=0)
    axes[0][0].set_ylabel("throughput (tokens/s)")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(
        "Throughput against fairness, one worker (a policy under which no two clients were ever "
        "backlogged together has no Jain index and no point)",
        fontsize=9,
    )
    _save(fig, out)


def p99_per_client(single: list[dict[str, Any]], multi: list[dict[str, Any]] | None, out: Path) -> None:
    panels = 2 if multi else 1
    fig, axes = plt.subplots(1, panels, figsize=(7 * panels, 3.6), squeeze=False)
    runs = [r for r in single if r["pattern"] == "heavy_client"]
    clients = list(runs[0]["clients"])
    width = 0.8 / len(runs)
    ax = axes[0][0]
    for k, record in enumerate(runs):
        values = [record["clients"][c]["e2e_p99"] for c in clients]
        ax.bar(
            np.arange(len(clients)) + k * width,
            values,
            width,
            label=record["policy"],
            color=POLICY_COLORS[record["policy"]],
        )
    ax.set_xticks(np.arange(len(clients)) + 0.4 - width / 2, clients, rotation=90, fontsize=6)
    ax.set_ylabel("end-to-end p99 (s)")
    ax.set_yscale("log")
    ax.set_title("one worker, heavy_client: p99 latency per client", fontsize=9)
    ax.legend(fontsize=7)
    if multi:
        ax = axes[0][1]
        workers = min(r["workers"] for r in multi if "clients" in r)
        for record in (r for r in multi if r["workers"] == workers and "clients" in r):
            p99 = np.sort([v["e2e_p99"] for v in record["clients"].values()])
            ax.plot(
                np.arange(len(p99)) / len(p99),
                p99,
                label=record["routing"],
                color=POLICY_COLORS[record["routing"]],
            )
        ax.set_yscale("log")
        ax.set_xlabel("clients, sorted by their p99")
        ax.set_ylabel("end-to-end p99 (s)")
        ax.set_title(f"{workers} workers, heavy clients: per-client p99, sorted", fontsize=9)
        ax.legend(fontsize=7)
    _save(fig, out)


def hit_rate_vs_workers(multi: list[dict[str, Any]], out: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    for routing in dict.fromkeys(r["routing"] for r in multi):
        runs = sorted((r for r in multi if r["routing"] == routing), key=lambda r: r["workers"])
        n = [r["workers"] for r in runs]
        axes[0].plot(
            n, [r["hit_rate"] for r in runs], marker="o", label=routing, color=POLICY_COLORS[routing]
        )
        axes[1].plot(
            n,
            [r["worst_light_e2e_p99"] for r in runs],
            marker="o",
            label=routing,
            color=POLICY_COLORS[routing],
        )
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("workers")
    axes[0].set_ylabel("prefix-cache hit rate")
    axes[1].set_ylabel("worst light client's e2e p99 (s)")
    axes[1].set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.suptitle("Routing policies as the cluster grows (heavy-client workload)", fontsize=10)
    _save(fig, out)


def quantum_sweep(records: list[dict[str, Any]], out: Path) -> None:
    runs = sorted(records, key=lambda r: r["quantum"])
    q = [r["quantum"] for r in runs]
    fig, ax = plt.subplots(figsize=(5, 3.4))
    ax.plot(q, [r["throughput_tok_s"] for r in runs], marker="o", color="tab:green", label="throughput")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("DLPM quantum Q (weighted tokens)")
    ax.set_ylabel("throughput (tokens/s)", color="tab:green")
    twin = ax.twinx()
    twin.plot(q, [r["service_gap"] for r in runs], marker="s", color="tab:red", label="service gap")
    twin.plot(q, [r["gap_bound"] for r in runs], ls="--", color="tab:red", label="bound")
    twin.set_ylabel("max service gap (weighted tokens)", color="tab:red")
    twin.set_yscale("log")
    twin.legend(fontsize=7, loc="center right")
    ax.set_title(f"DLPM quantum sweep, {runs[0]['pattern']}", fontsize=10)
    _save(fig, out)


def _save(fig, out: Path) -> None:
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    print(out, file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    figures = [
        "service_over_time",
        "throughput_vs_fairness",
        "p99_per_client",
        "hit_rate_vs_workers",
        "quantum_sweep",
    ]
    parser.add_argument("figure", choices=[*figures, "all"])
    parser.add_argument("--cost", default="cpu")
    parser.add_argument("--rerun", action="store_true", help="re-simulate from the saved traces first")
    args = parser.parse_args()
    wanted = figures if args.figure == "all" else [args.figure]

    def records(experiment: str, keep=lambda record: True) -> list[dict[str, Any]]:
        path = records_path(experiment, args.cost)
        if not path.exists():
            return []
        data = json.loads(path.read_text())
        rows = [r for r in data["rows"] if keep(r)]
        if args.rerun:
            meta = {"quantum": data.get("quantum") or data.get("args", {}).get("quantum", 8192.0)}
            meta["router_quantum"] = data.get("args", {}).get("router_quantum", 8192.0)
            rows = rerun(rows, args.cost, meta)
        return rows

    def out(name: str) -> Path:
        return RESULTS_DIR / f"eval_fig_{name}_{args.cost}.png"

    if "service_over_time" in wanted:
        single = records("single_worker", lambda r: r["pattern"] in ("heavy_client", "shared_prefix_unequal"))
        for pattern in ("heavy_client", "shared_prefix_unequal"):
            service_over_time(single, pattern, out(f"service_over_time_{pattern}"))
    if "throughput_vs_fairness" in wanted:
        throughput_vs_fairness(records("single_worker"), out("throughput_vs_fairness"))
    if "p99_per_client" in wanted:
        smallest = min((r["workers"] for r in records("multi_worker")), default=0)
        p99_per_client(
            records("single_worker", lambda r: r["pattern"] == "heavy_client"),
            records("multi_worker", lambda r: r["workers"] == smallest) or None,
            out("p99_per_client"),
        )
    if "hit_rate_vs_workers" in wanted:
        hit_rate_vs_workers(records("multi_worker"), out("hit_rate_vs_workers"))
    if "quantum_sweep" in wanted:
        quantum_sweep(records("quantum_sweep"), out("quantum_sweep"))


if __name__ == "__main__":
    main()
