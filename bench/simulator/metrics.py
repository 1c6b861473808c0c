"""Summary metrics of one run: throughput, latency per client, fairness, cache hits, load balance.

Definitions (docs/evaluation.md repeats them):
- throughput: prompt plus output tokens of finished requests per second of
  makespan (first release to last finish); output tokens per second beside it.
- TTFT and end-to-end latency from a request's release; per client p50/p99,
  and the worst client's p99.
- service gap: for tracked pairs of clients, the largest swing of their
  weight-normalised service difference within a stretch where both had a
  request waiting (see recorder.PairGaps), against DLPM's bound from
  scheduler/dlpm.py: 2·Q + D_A/w_A + D_B/w_B, D_i = w_in·L_i + w_out·M_i·R_i.
- Jain's index: the run is cut into ``windows`` (10) equal windows; in each,
  over the clients backlogged for at least 90% of the window, of their
  weight-normalised service in it; averaged over windows with two or more
  such clients, weighted by their count (a window where every backlogged
  client got the same service per weight scores 1). Windows much shorter
  than a scheduling round would score round-robin as unfair, hence 10.
- hit rate: cached prompt tokens / prompt tokens, over finished requests.
- load imbalance: max / mean over workers of busy time.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from bench.simulator.simulation import SimResult


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def jain(values: np.ndarray) -> float:
    total = float(values.sum())
    squares = float((values * values).sum())
    return total * total / (len(values) * squares) if squares > 0 else 1.0


def per_client_latency(result: SimResult) -> dict[str, dict[str, float]]:
    ttft: dict[str, list[float]] = defaultdict(list)
    e2e: dict[str, list[float]] = defaultdict(list)
    for f in result.recorder.finished:
        ttft[f.client_id].append(f.first_token - f.arrival)
        e2e[f.client_id].append(f.finished - f.arrival)
    return {
        c: {
            "requests": len(e2e[c]),
            "ttft_p50": percentile(ttft[c], 50),
            "ttft_p99": percentile(ttft[c], 99),
            "e2e_p50": percentile(e2e[c], 50),
            "e2e_p99": percentile(e2e[c], 99),
        }
        for c in sorted(e2e)
    }


def windowed_jain(result: SimResult, windows: int = 10, backlog_fraction: float = 0.9) -> float:
    rec = result.recorder
    clients = sorted(rec.weights)
    bins = int(result.makespan / rec.service.bin_s) + 1
    per = max(1, bins // windows)
    usable = (bins // per) * per  # whole windows only
    service = rec.service.matrix(clients, bins)[:, :usable].reshape(len(clients), -1, per).sum(axis=2)
    backlog = rec.backlog_time.matrix(clients, bins)[:, :usable].reshape(len(clients), -1, per).sum(axis=2)
    weights = np.array([rec.weights[c] for c in clients])
    scores, counts = [], []
    for w in range(service.shape[1]):
        mask = backlog[:, w] >= backlog_fraction * per * rec.service.bin_s
        if mask.sum() >= 2:
            scores.append(jain(service[mask, w] / weights[mask]))
            counts.append(int(mask.sum()))
    return float(np.average(scores, weights=counts)) if scores else float("nan")


def service_gap(result: SimResult) -> dict[str, Any]:
    """The worst tracked pair's gap, and DLPM's bound for that pair (and the worst gap/bound ratio)."""
    rec = result.recorder
    s = result.config.engine.scheduler
    longest: dict[str, int] = defaultdict(int)
    most_out: dict[str, int] = defaultdict(int)
    for r in result.trace.requests:
        longest[r.client_id] = max(longest[r.client_id], r.prompt_tokens)
        most_out[r.client_id] = max(most_out[r.client_id], r.max_tokens)

    def slack(client: str) -> float:
        d = s.input_token_weight * longest[client] + s.output_token_weight * most_out[client] * max(
            1, rec.max_running.get(client, 1)
        )
        return d / rec.weights.get(client, 1.0)

    k = len(rec.tracked)
    if k < 2:
        return {"gap": 0.0, "bound": float("nan"), "gap_over_bound": 0.0, "pair": None}
    worst = rec.gaps.worst
    bounds = np.array(
        [[2 * s.quantum + slack(a) + slack(b) for b in rec.tracked] for a in rec.tracked], dtype=float
    )
    ratio = np.where(np.eye(k, dtype=bool), 0.0, worst / bounds)
    i, j = np.unravel_index(int(np.argmax(worst)), worst.shape)
    ri, rj = np.unravel_index(int(np.argmax(ratio)), ratio.shape)
    return {
        "gap": float(worst[i, j]),
        "bound": float(bounds[i, j]),
        "pair": [rec.tracked[i], rec.tracked[j]],
        "gap_over_bound": float(ratio[ri, rj]),
    }


def cluster_gap_over_bound(result: SimResult) -> float:
    """The worst tracked pair's service gap over D2LPM's cluster bound (docs/cluster-fairness.md).

    With N workers, each running DLPM with quantum Q, the bound for clients A and B is the sum of
    the single-worker bounds over the workers: ``N·(2Q + w_in·(L_A/w_A + L_B/w_B)) + w_out·(M_A·R_A/w_A
    + M_B·R_B/w_B)``, R_i being the most of i's requests running at once anywhere in the cluster.
    """
    rec = result.recorder
    s = result.config.engine.scheduler
    n = result.config.num_workers
    k = len(rec.tracked)
    if k < 2:
        return 0.0
    longest: dict[str, int] = defaultdict(int)
    most_out: dict[str, int] = defaultdict(int)
    for r in result.trace.requests:
        longest[r.client_id] = max(longest[r.client_id], r.prompt_tokens)
        most_out[r.client_id] = max(most_out[r.client_id], r.max_tokens)

    def part(client: str) -> tuple[float, float]:
        w = rec.weights.get(client, 1.0)
        running = max(1, rec.max_running.get(client, 1))
        return s.input_token_weight * longest[client] / w, s.output_token_weight * most_out[
            client
        ] * running / w

    parts = [part(c) for c in rec.tracked]
    bounds = np.array(
        [[n * (2 * s.quantum + a[0] + b[0]) + a[1] + b[1] for b in parts] for a in parts], dtype=float
    )
    ratio = np.where(np.eye(k, dtype=bool), 0.0, rec.gaps.worst / bounds)
    return float(ratio.max())


def gate_gap_over_bound(result: SimResult) -> float:
    """The worst tracked pair's service gap, over stretches where both have a request held in the
    router's admission gate, divided by the late-binding bound (docs/cluster-fairness.md):

        sum over i in {A, B} of (w_in·L_i·(1 + 2·F_i) + w_out·M_i·F_i + 2·F_i·(w_in·L_i + w_out·b)) / w_i

    F_i: the most requests of i in flight at once (dispatched, not finished), b: the router's output
    booking batch (16 tokens here). The first two terms are VTC's argument on the ledger's counters
    (a release, the outputs of the requests in flight, and their input corrections, which move either
    client's counter up or down); the last is how far
    the service measured here (input at the worker's admission, output per token) can stand from
    those counters (input booked at dispatch, output in batches), at each end of a stretch. 0 when
    no gate ran.
    """
    rec = result.recorder
    router = result.router
    s = result.config.engine.scheduler
    k = len(rec.tracked)
    if k < 2 or router is None or router.gate is None:
        return 0.0
    longest: dict[str, int] = defaultdict(int)
    most_out: dict[str, int] = defaultdict(int)
    for r in result.trace.requests:
        longest[r.client_id] = max(longest[r.client_id], r.prompt_tokens)
        most_out[r.client_id] = max(most_out[r.client_id], r.max_tokens)
    batch = router.charge_batch_tokens

    def part(client: str) -> float:
        w_in, w_out = s.input_token_weight, s.output_token_weight
        f = max(1, router.max_client_inflight.get(client, 1))
        counters = w_in * longest[client] * (1 + 2 * f) + w_out * most_out[client] * f
        measured = 2 * f * (w_in * longest[client] + w_out * batch)
        return (counters + measured) / rec.weights.get(client, 1.0)

    parts = [part(c) for c in rec.tracked]
    bounds = np.array([[a + b for b in parts] for a in parts], dtype=float)
    ratio = np.where(np.eye(k, dtype=bool), 0.0, rec.gate_gaps.worst / bounds)
    return float(ratio.max())


def summarize(result: SimResult) -> dict[str, Any]:
    rec = result.recorder
    finished = rec.finished
    prompt = sum(f.prompt_tokens for f in finished)
    cached = sum(f.cached_tokens for f in finished)
    output = sum(f.output_tokens for f in finished)
    span = result.makespan or float("nan")
    latency = per_client_latency(result)
    busy = np.array([w.runner.busy_seconds for w in result.workers])
    computed = np.array([w.runner.tokens for w in result.workers], dtype=float)
    gap = service_gap(result)
    summary: dict[str, Any] = {
        "requests": len(finished),
        "rejected": len(result.rejected),
        "makespan_s": result.makespan,
        "throughput_tok_s": (prompt + output) / span,
        "output_tok_s": output / span,
        "requests_s": len(finished) / span,
        "hit_rate": cached / prompt if prompt else 0.0,
        "computed_tokens": float(computed.sum()),
        "preemptions": sum(f.preemptions for f in finished),
        "ttft_p50": percentile([f.first_token - f.arrival for f in finished], 50),
        "ttft_p99": percentile([f.first_token - f.arrival for f in finished], 99),
        "e2e_p50": percentile([f.finished - f.arrival for f in finished], 50),
        "e2e_p99": percentile([f.finished - f.arrival for f in finished], 99),
        "worst_client_e2e_p99": max((v["e2e_p99"] for v in latency.values()), default=float("nan")),
        "worst_client_ttft_p99": max((v["ttft_p99"] for v in latency.values()), default=float("nan")),
        "jain": windowed_jain(result),
        "service_gap": gap["gap"],
        "gap_bound": gap["bound"],
        "gap_over_bound": gap["gap_over_bound"],
        "gap_pair": gap["pair"],
        "load_imbalance": float(busy.max() / busy.mean()) if busy.mean() > 0 else 1.0,
        "token_imbalance": float(computed.max() / computed.mean()) if computed.mean() > 0 else 1.0,
        "steps": result.steps,
    }
    if result.router is not None:
        summary["routing_reasons"] = dict(result.router.reasons)
    return summary
