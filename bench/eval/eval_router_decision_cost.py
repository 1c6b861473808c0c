"""Router decision cost at scale: one routing decision with 10,000 clients and 64 workers.

A decision is what ``RequestRouter._route`` does before forwarding: estimate
every worker's prefix match (approximate tree corrected by the workers'
cache reports), build the worker states, let the policy route (which admits
into the ledger: in process, or one Lua script on a real redis-server), and
record the route in the tree. State is warmed first: every client has a
document routed to one or two workers, every worker has reported a digest
of the hashes it holds (the worker's limit, 4096), and every client has
ledger records on its workers. Then requests of random clients are timed
one by one. Each client has one request at a time: before its next one is
timed, the previous one finishes (untimed), so every timed decision takes
the path of a client returning from idle, VTC's lift included. The garbage
collector runs with the router process's settings (radixfair_router/gc_tuning.py).

    .venv/bin/python bench/eval/eval_router_decision_cost.py [--clients 10000] [--workers 64]

Writes bench/results/eval_router_decision_cost.{json,md}. Targets (issue 7):
p99 <= 200 us in process and <= 2 ms with Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.report import write_results  # noqa: E402
from radixfair.prefix_hash import page_hashes  # noqa: E402
from radixfair.redis_launcher import RedisServer  # noqa: E402
from radixfair_router.cache_view import CacheView  # noqa: E402
from radixfair_router.config import ApproxTreeConfig, CostConfig, LedgerConfig, PolicyConfig  # noqa: E402
from radixfair_router.gc_tuning import tune_for_routing  # noqa: E402
from radixfair_router.ledger import Ledger  # noqa: E402
from radixfair_router.ledger_state import Charge  # noqa: E402
from radixfair_router.policies import RoutingRequest, WorkerState, build_policy, registry  # noqa: E402

PAGE = 16
DIGEST_LIMIT = 4096


class Scenario:
    """Clients' documents and where they are cached, shared by every measured configuration."""

    def __init__(self, clients: int, workers: int, doc_tokens: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.rng = rng
        self.worker_ids = [f"w{i:03d}" for i in range(workers)]
        self.docs = rng.integers(1000, 40000, size=(clients, doc_tokens)).tolist()
        self.homes = [
            list(rng.choice(workers, size=int(rng.integers(1, 3)), replace=False)) for _ in range(clients)
        ]
        self.clients = [f"client{i:05d}" for i in range(clients)]

    def prompt(self, client: int) -> list[int]:
        return self.docs[client] + self.rng.integers(1000, 40000, size=64).tolist()

    def reports(self) -> dict[str, list[int]]:
        held: dict[str, list[int]] = {w: [] for w in self.worker_ids}
        for client, homes in enumerate(self.homes):
            for home in homes:
                held[self.worker_ids[home]].extend(page_hashes(self.docs[client], PAGE))
        return {w: hashes[-DIGEST_LIMIT:] for w, hashes in held.items()}


async def measure(scenario: Scenario, policy_name: str, ledger: Ledger, decisions: int) -> dict[str, object]:
    config = PolicyConfig(name=policy_name)
    policy = build_policy(config, CostConfig(), ledger)
    view = CacheView(ApproxTreeConfig())
    for client, homes in enumerate(scenario.homes):
        for home in homes:
            view.record_routed(scenario.docs[client], scenario.worker_ids[home])
    for worker_id, hashes in scenario.reports().items():
        view.update_report(worker_id, PAGE, hashes)
    loads = {w: int(scenario.rng.integers(0, 16)) for w in scenario.worker_ids}

    in_flight: dict[int, str] = {}

    async def finish_previous(client: int) -> None:
        worker = in_flight.pop(client, None)
        if worker is not None:
            weight = 2.0 if client % 10 == 0 else 1.0
            done = Charge(scenario.clients[client], weight, worker, 64.0, completion_tokens=32, finished=True)
            await ledger.charge(done)

    async def decide(client: int) -> tuple[float, float]:
        await finish_previous(client)
        tokens = scenario.prompt(client)
        start = time.perf_counter()
        matches = view.estimate(tokens, scenario.worker_ids)
        states = [
            WorkerState(w, loads[w], matches[w], view.tree.worker_tokens(w)) for w in scenario.worker_ids
        ]
        estimated = time.perf_counter()
        request = RoutingRequest(scenario.clients[client], 2.0 if client % 10 == 0 else 1.0, len(tokens))
        decision = await policy.route(request, states)
        view.record_routed(tokens, decision.worker_id)
        end = time.perf_counter()
        in_flight[client] = decision.worker_id
        return end - start, estimated - start

    for client in range(len(scenario.clients)):  # every client gets ledger state
        await decide(client)
    tune_for_routing()  # as the router process does once it serves
    totals, estimates = [], []
    for client in scenario.rng.integers(0, len(scenario.clients), size=decisions):
        total, estimate = await decide(int(client))
        totals.append(total)
        estimates.append(estimate)
    t = np.array(totals) * 1e6
    e = np.array(estimates) * 1e6
    return {
        "decisions": decisions,
        "p50_us": float(np.percentile(t, 50)),
        "p99_us": float(np.percentile(t, 99)),
        "mean_us": float(t.mean()),
        "estimate_p50_us": float(np.percentile(e, 50)),
        "estimate_p99_us": float(np.percentile(e, 99)),
        "policy_p50_us": float(np.percentile(t - e, 50)),
        "policy_p99_us": float(np.percentile(t - e, 99)),
    }


async def run(args: argparse.Namespace) -> list[dict[str, object]]:
    scenario = Scenario(args.clients, args.workers, args.doc_tokens)
    rows = []
    for store in args.stores:
        for policy_name in args.policies:
            server = RedisServer().start() if store == "redis" else None
            try:
                config = LedgerConfig(store=store, redis_url=server.url if server else "")
                ledger = Ledger(config, PolicyConfig().quantum)
                decisions = args.decisions if store == "memory" else args.redis_decisions
                result = await measure(scenario, policy_name, ledger, decisions)
                await ledger.close()
            finally:
                if server is not None:
                    server.stop()
            target = 200.0 if store == "memory" else 2000.0
            row = {"store": store, "policy": policy_name, **result, "target_p99_us": target}
            row["meets_target"] = result["p99_us"] <= target
            rows.append(row)
            print(row, file=sys.stderr)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=64)
    parser.add_argument("--doc-tokens", type=int, default=256)
    parser.add_argument("--decisions", type=int, default=5000)
    parser.add_argument("--redis-decisions", type=int, default=3000)
    parser.add_argument("--stores", nargs="*", default=["memory", "redis"])
    parser.add_argument("--policies", nargs="*", default=list(registry.names()), choices=registry.names())
    args = parser.parse_args()
    rows = asyncio.run(run(args))
    columns = [
        "store",
        "policy",
        "decisions",
        "p50_us",
        "p99_us",
        "estimate_p50_us",
        "estimate_p99_us",
        "policy_p50_us",
        "policy_p99_us",
        "target_p99_us",
        "meets_target",
    ]
    notes = (
        f"{args.clients} clients with {args.doc_tokens}-token documents, each cached on 1-2 of "
        f"{args.workers} workers; every worker reported a {DIGEST_LIMIT}-hash digest; approximate tree "
        "bounded at its default 1M tokens. estimate = CacheView.estimate + worker states; policy = "
        "policy.route (ledger admit) + recording the route in the tree. Machine load average at the "
        f"end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (shared), which inflates the tails."
    )
    write_results("eval_router_decision_cost", rows, columns, {"args": vars(args)}, notes)


if __name__ == "__main__":
    main()
