"""Shared pieces of the evaluation scripts: cost models, engine settings, running one simulated configuration.

A *run* is one saved trace simulated under one configuration (local policy,
and with several workers a routing policy). ``run_record`` turns the result
into a JSON-able record with the summary metrics, per-client latency and the
service-over-time series the figures need, so figures can be redrawn from
the records or re-simulated from the traces.
"""

from __future__ import annotations

import hashlib
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.report import RAW_DIR, RESULTS_DIR  # noqa: E402
from bench.simulator.cost_model import StepCostModel  # noqa: E402
from bench.simulator.metrics import per_client_latency, summarize  # noqa: E402
from bench.simulator.simulation import SimConfig, SimResult, simulate  # noqa: E402
from bench.workloads import generate_trace, load_trace, save_trace  # noqa: E402
from bench.workloads.spec import WorkloadSpec  # noqa: E402
from bench.workloads.trace import Trace  # noqa: E402
from radixfair_engine.config import EngineConfig, SchedulerConfig  # noqa: E402
from radixfair_engine.scheduler import registry as scheduler_registry  # noqa: E402
from radixfair_router.config import PolicyConfig  # noqa: E402
from radixfair_router.policies import registry as routing_registry  # noqa: E402

# Saved traces are regenerated from their spec and seed on first use; git ignores them.
TRACES = RESULTS_DIR / "eval_traces"
# Record fields too bulky for the committed summary: they go to bench/results/raw/ (see report.py).
RAW_RECORD_KEYS = ("service_series",)
# Every registered local policy (scheduler/registry.py), in registry order.
LOCAL_POLICIES = scheduler_registry.names()
# Local policy labels that are a policy with other SchedulerConfig settings: DLPM that forgives
# an idle client's debt (idle_deficit "reset") instead of keeping it.
LOCAL_VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "dlpm_reset": ("dlpm", {"idle_deficit": "reset"}),
    # The rule before "lift" became the default (2026-11-29): a returning client keeps its debt, capped.
    "dlpm_cap": ("dlpm", {"idle_deficit": "cap"}),
    # DLPM with rule 7 (a returning client's turn, scheduler/client_passes.py; off by default), and with
    # a locality allowance of 8 admissions before the turn.
    "dlpm_turns": ("dlpm", {"returning_turns": True}),
    "dlpm_turns_p8": ("dlpm", {"returning_turns": True, "max_client_passes": 8}),
}
# Routing labels that are a router policy with other PolicyConfig settings. Our cache_aware
# defaults to balance thresholds 8 / 1.5; the SGLang router ships 64 / 1.5 (cache threshold
# 0.3), so its own default behaviour runs beside ours as the baseline the issue names.
ROUTING_VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "cache_aware_sglang": (
        "cache_aware",
        {"balance_abs_threshold": 64, "balance_rel_threshold": 1.5, "cache_threshold": 0.3},
    ),
    "d2lpm_reset": ("d2lpm", {}),
    "d2lpm_cap": ("d2lpm", {}),
    "d2lpm_turns": ("d2lpm", {}),
    # D2LPM with late binding: the gate lets as many requests per worker into flight as a worker
    # runs at once (engine_config's 32), so batches stay full and the gate decides who fills a freed
    # slot. The router's default (4, global VTC's) would cap each worker at 4 running requests.
    "d2lpm_gated": ("d2lpm_gated", {"vtc_slots_per_worker": 32}),
}
# The routing baselines: every registered router policy (policies/registry.py) at its defaults, in
# registry order; a policy whose evaluation needs other settings runs under its ROUTING_VARIANTS label.
ROUTING_POLICIES = tuple(name for name in routing_registry.names() if name not in ROUTING_VARIANTS)
# Variants whose workers run a local variant rather than the policy's own local_policy.
_VARIANT_LOCAL = {
    "d2lpm_reset": "dlpm_reset",
    "d2lpm_cap": "dlpm_cap",
    "d2lpm_turns": "dlpm_turns",
}
# The local scheduler each routing label runs with: the policy's own pairing (local_policy:
# SGLang-style workers (LPM) behind the cache-blind and cache-aware routers, VTC behind global VTC,
# DLPM behind D2LPM), or its variant's.
LOCAL_FOR_ROUTING: dict[str, str] = {
    **{name: cls.local_policy for name, cls in routing_registry.POLICIES.items()},
    **{
        label: _VARIANT_LOCAL.get(label, routing_registry.POLICIES[name].local_policy)
        for label, (name, _) in ROUTING_VARIANTS.items()
    },
}


def routing_settings(label: str) -> tuple[str, dict[str, Any]]:
    """The router policy name and PolicyConfig overrides behind a routing label."""
    return ROUTING_VARIANTS.get(label, (label, {}))


def cost_model(name: str) -> StepCostModel:
    return StepCostModel.load(RESULTS_DIR / f"eval_cost_model_{name}.json")


def engine_config(policy: str, quantum: float, num_pages: int, lpm_aging_rate: float) -> EngineConfig:
    """One worker: 32 running requests, 2048-token steps, ``num_pages`` x 16 tokens of KV.

    ``policy`` is a local policy name or a label of LOCAL_VARIANTS."""
    policy, settings = LOCAL_VARIANTS.get(policy, (policy, {}))
    return EngineConfig(
        page_size=16,
        num_pages=num_pages,
        max_running_requests=32,
        max_batched_tokens=2048,
        max_waiting_requests=10**7,
        scheduler=SchedulerConfig(policy=policy, quantum=quantum, lpm_aging_rate=lpm_aging_rate, **settings),
    )


def trace_key(spec: WorkloadSpec, seed: int) -> str:
    """A digest of every parameter that shapes the trace: the whole spec (each client's every field) and
    the seed. Two runs share a saved trace only if they would have generated the same one."""
    return hashlib.sha256(repr((spec, seed)).encode()).hexdigest()[:12]


def saved_trace(name: str, spec: WorkloadSpec, seed: int = 1, traces: Path = TRACES) -> tuple[Trace, Path]:
    """The trace of (``spec``, ``seed``), saved as ``<name>_<trace_key>`` under ``traces``, generated the
    first time. ``name`` is for the reader; the key makes a changed parameter a different file."""
    path = traces / f"{name}_{trace_key(spec, seed)}.jsonl.gz"
    if not path.exists():
        save_trace(generate_trace(spec, seed), path)
    return load_trace(path), path


def output_dir(out: Path | None, complete: bool) -> Path:
    """Where a run's results go: ``out`` if given; the tracked bench/results/ for a complete run; a
    partial run (a subset of the policies or patterns) to the git-ignored raw/partial/, so it can never
    overwrite a tracked page with a subset."""
    if out is not None:
        return out
    if complete:
        return RESULTS_DIR
    print(f"partial run: results go to {RAW_DIR / 'partial'} (git-ignored)", file=sys.stderr)
    return RAW_DIR / "partial"


def traces_dir(out: Path | None) -> Path:
    """Saved traces: bench/results/eval_traces/, or eval_traces/ under an explicit ``--out``."""
    return TRACES if out is None else out / "eval_traces"


def run(
    trace: Trace,
    cost: StepCostModel,
    policy: str,
    *,
    quantum: float = 8192.0,
    num_pages: int = 768,
    workers: int = 1,
    routing: str | None = None,
    router_quantum: float = 8192.0,
    lpm_aging_rate: float = 100.0,
    bin_s: float | None = None,
    routing_overrides: dict[str, Any] | None = None,
) -> tuple[SimResult, float]:
    """Simulates ``trace``; returns the result and the wall-clock seconds the simulation took.

    ``routing_overrides`` sets other PolicyConfig fields of the router (balance thresholds, say)."""
    duration = max(r.arrival_s for r in trace.requests)
    config = SimConfig(
        engine_config(policy, quantum, num_pages, lpm_aging_rate),
        cost,
        num_workers=workers,
        routing=PolicyConfig(name=routing, quantum=router_quantum, **(routing_overrides or {}))
        if routing
        else None,
        bin_s=bin_s or max(duration / 100, 1e-3),
    )
    start = time.perf_counter()
    result = simulate(config, trace)
    return result, time.perf_counter() - start


def run_record(result: SimResult, wall_s: float, **labels: Any) -> dict[str, Any]:
    rec = result.recorder
    clients = rec.tracked or sorted(rec.weights)[:16]
    bins = int(result.makespan / rec.service.bin_s) + 1
    series = np.cumsum(rec.service.matrix(clients, bins), axis=1)
    record: dict[str, Any] = {
        **labels,
        **summarize(result),
        "sim_wall_s": wall_s,
        "clients": per_client_latency(result),
        "service_series": {
            "bin_s": rec.service.bin_s,
            "clients": clients,
            "weights": [rec.weights.get(c, 1.0) for c in clients],
            "cumulative": np.round(series, 1).tolist(),
        },
    }
    return record
