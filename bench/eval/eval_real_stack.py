"""Replays a saved trace on the real stack: Redis, the router and N worker processes with SmolLM2-135M.

Each trace request is sent through the Python client at its arrival time
(a conversation turn after its previous turn finishes, plus its think time),
as token ids with ``ignore_eos`` so every request generates exactly its
``max_tokens``. Per request it records the client-side TTFT and end-to-end
latency, the worker that served it and the cached prompt tokens it
reported. The same trace then runs in the simulator under the same routing
policy, so placement and hit rate can be compared (latency cannot on this
shared CPU: see docs/evaluation.md).

    .venv/bin/python bench/eval/eval_real_stack.py --workers 2 --policies cache_aware d2lpm

Writes bench/results/eval_real_stack.{json,md}. Budget: the default trace is
12 requests of 16 output tokens, a few minutes on two cores.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
import tempfile
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.eval.eval_runs import LOCAL_FOR_ROUTING, ROUTING_POLICIES, TRACES, cost_model, run  # noqa: E402
from bench.report import write_results  # noqa: E402
from bench.workloads import build_pattern, generate_trace, load_trace, prompt_token_ids, save_trace  # noqa: E402
from bench.workloads.trace import Trace, TraceRequest  # noqa: E402
from radixfair.auth import ApiKeyConfig  # noqa: E402
from radixfair.client import RouterClient  # noqa: E402
from radixfair.local_stack import LocalStack, LocalStackConfig  # noqa: E402

TRACE = TRACES / "real_stack_shared_prefix.jsonl"


def small_trace() -> Trace:
    spec = build_pattern(
        "shared_prefix",
        {
            "num_clients": 4,
            "rate": 0.1,
            "duration_s": 30.0,
            "doc_tokens": 256,
            "question_low": 16,
            "question_high": 32,
            "output_low": 16,
            "output_high": 16,
        },
    )
    return generate_trace(replace(spec, name="real_stack_shared_prefix"), seed=3)


async def replay(address: str, trace: Trace, keys: dict[str, str]) -> dict[str, dict[str, float | str]]:
    clients = {c: RouterClient.connect(address, keys[c]) for c in trace.clients}
    finished: dict[str, asyncio.Event] = {r.request_id: asyncio.Event() for r in trace.requests}
    out: dict[str, dict[str, float | str]] = {}
    t0 = time.monotonic()

    async def one(spec: TraceRequest) -> None:
        if spec.after is not None:
            await finished[spec.after].wait()
            await asyncio.sleep(spec.think_s)
        await asyncio.sleep(max(0.0, spec.arrival_s - (time.monotonic() - t0)))
        start = time.monotonic()
        first = None
        result = None
        async for message in clients[spec.client_id].stream(
            prompt_token_ids(spec), request_id=spec.request_id, max_tokens=spec.max_tokens, ignore_eos=True
        ):
            if message.HasField("delta") and message.delta.token_ids and first is None:
                first = time.monotonic()
            elif message.HasField("result"):
                result = message.result
        end = time.monotonic()
        assert result is not None
        out[spec.request_id] = {
            "client": spec.client_id,
            "worker": result.worker_id,
            "prompt_tokens": result.usage.prompt_tokens,
            "cached_tokens": result.usage.cached_tokens,
            "ttft_s": (first or end) - start,
            "e2e_s": end - start,
        }
        finished[spec.request_id].set()

    try:
        await asyncio.gather(*(one(r) for r in trace.requests))
    finally:
        for client in clients.values():
            await client.close()
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", nargs="*", type=int, default=[2])
    parser.add_argument("--policies", nargs="*", default=list(ROUTING_POLICIES))
    parser.add_argument("--cost", default="cpu", help="cost model of the simulated comparison")
    args = parser.parse_args()
    if not TRACE.exists():
        save_trace(small_trace(), TRACE)
    trace = load_trace(TRACE)
    keys = {c: f"bench-key-{c}" for c in trace.clients}
    weights = trace.weights()
    rows = []
    for workers in args.workers:
        for policy in args.policies:
            local = LOCAL_FOR_ROUTING[policy]
            config = LocalStackConfig(
                run_dir=Path(tempfile.mkdtemp(prefix="radixfair-eval-")),
                workers=workers,
                router_port=free_port(),
                policy=policy,
                quantum=8192.0,
                api_keys=tuple(ApiKeyConfig(keys[c], c, weights[c]) for c in trace.clients),
                worker_settings={
                    "engine.page_size": 16,
                    "engine.num_pages": 512,
                    "engine.scheduler.policy": local,
                    "engine.scheduler.quantum": 8192.0,
                },
            )
            stack = LocalStack(config)
            stack.start()
            try:
                start = time.monotonic()
                real = asyncio.run(replay(stack.address, trace, keys))
                wall = time.monotonic() - start
            finally:
                stack.stop()
            sim, _ = run(trace, cost_model(args.cost), local, workers=workers, routing=policy, num_pages=512)
            rows.append(_row(workers, policy, trace, real, wall, sim))
            print(rows[-1], file=sys.stderr)
    columns = [
        "workers",
        "policy",
        "requests",
        "real_hit_rate",
        "sim_hit_rate",
        "real_clients_on_one_worker",
        "sim_clients_on_one_worker",
        "real_e2e_p50_s",
        "sim_e2e_p50_s",
        "real_e2e_p99_s",
        "sim_e2e_p99_s",
        "real_wall_s",
    ]
    notes = (
        f"Trace `{TRACE.name}` ({len(trace.requests)} requests, {len(trace.clients)} clients with 256-token "
        "documents, 16 output tokens each) replayed through the router on real worker processes "
        "(SmolLM2-135M, CPU, 512 KV pages of 16) and in the simulator with the same routing policy. "
        "clients_on_one_worker: share of clients all of whose requests went to a single worker. "
        "Latencies are wall-clock on a 2-core machine shared with other jobs; sim_* use the cost model "
        f"`{args.cost}`, whose calibration is in eval_calibration_{args.cost}.md."
    )
    write_results("eval_real_stack", rows, columns, {"trace": TRACE.name, "sim_cost": args.cost}, notes)


def _row(workers: int, policy: str, trace: Trace, real: dict, wall: float, sim) -> dict[str, object]:
    prompt = sum(float(v["prompt_tokens"]) for v in real.values())
    cached = sum(float(v["cached_tokens"]) for v in real.values())
    e2e = [float(v["e2e_s"]) for v in real.values()]
    real_homes = Counter()
    for client in trace.clients:
        real_homes[client] = len({v["worker"] for v in real.values() if v["client"] == client})
    sim_homes = Counter()
    for client in trace.clients:
        sim_homes[client] = len({f.worker for f in sim.recorder.finished if f.client_id == client})
    sim_prompt = sum(f.prompt_tokens for f in sim.recorder.finished)
    sim_cached = sum(f.cached_tokens for f in sim.recorder.finished)
    return {
        "workers": workers,
        "policy": policy,
        "requests": len(real),
        "real_hit_rate": cached / prompt,
        "sim_hit_rate": sim_cached / sim_prompt,
        "real_clients_on_one_worker": sum(1 for n in real_homes.values() if n == 1) / len(real_homes),
        "sim_clients_on_one_worker": sum(1 for n in sim_homes.values() if n == 1) / len(sim_homes),
        "real_e2e_p50_s": float(np.percentile(e2e, 50)),
        "real_e2e_p99_s": float(np.percentile(e2e, 99)),
        "sim_e2e_p50_s": float(np.percentile([f.finished - f.arrival for f in sim.recorder.finished], 50)),
        "sim_e2e_p99_s": float(np.percentile([f.finished - f.arrival for f in sim.recorder.finished], 99)),
        "real_wall_s": wall,
        "per_request": real,
    }


if __name__ == "__main__":
    main()
