"""The README's main job: the whole local stack with the real SmolLM2-135M-Instruct.

Starts Redis, a router (D²LPM) and two workers, drives a short multi-client
workload whose requests share per-client system prompts through the router
with the Python client, and prints a per-client table of service, latency and
cache hits, plus the routing policy used.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from radixfair.auth import ApiKeyConfig
from radixfair.client import RouterClient
from radixfair.local_stack import LocalStack, LocalStackConfig
from radixfair.tokenization import ChatTurn

CLIENTS = {
    "acme-support": (
        "You are the support assistant of Acme Rockets. Answer briefly and politely. Acme sells model "
        "rockets, launch pads and safety gear. Orders ship within two days. Refunds take one week."
    ),
    "globex-tutor": (
        "You are a patient maths tutor for Globex school. Explain each step in plain words, use small "
        "numbers in examples, and end with one short practice question for the student."
    ),
    "initech-ops": (
        "You are an operations assistant at Initech. Reply with a short checklist. Mention the TPS "
        "report deadline when relevant and never promise dates you cannot keep."
    ),
}
QUESTIONS = [
    "How do I get started?",
    "What should I do first today?",
    "Can you give me a quick example?",
]
WEIGHTS = {"acme-support": 1.0, "globex-tutor": 1.0, "initech-ops": 2.0}

COLUMNS = """
service   weighted tokens the ledger booked for the client: 1 per prompt token the worker computed
          (prompt tokens served from its cache are free), 2 per output token. This is what fairness
          counts.
svc/wt    service divided by the client's weight: what D²LPM and VTC equalise between clients that
          are all waiting. A weight-2 client may take twice the service of a weight-1 one before the
          others go first; with light load, as here, every client gets what it asks for.
hit %     share of the prompt tokens served from a worker's prefix cache.
workers   requests served by each worker: a client's long system prompt keeps it on one worker
          (locality), while a new prefix goes to the least loaded worker."""


@dataclass
class ClientTally:
    requests: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    ttft_ms: list[float] = field(default_factory=list)
    total_ms: list[float] = field(default_factory=list)
    workers: Counter = field(default_factory=Counter)


async def one_request(
    client: RouterClient, name: str, system: str, question: str, tally: ClientTally, max_tokens: int
) -> None:
    turns = [ChatTurn("system", system), ChatTurn("user", question)]
    output = await client.generate(turns, max_tokens=max_tokens, temperature=0.0)
    result = output.result
    tally.requests += 1
    tally.prompt_tokens += result.usage.prompt_tokens
    tally.cached_tokens += result.usage.cached_tokens
    tally.completion_tokens += result.usage.completion_tokens
    tally.ttft_ms.append(result.timings.time_to_first_token_ms)
    tally.total_ms.append(result.timings.total_ms)
    tally.workers[result.worker_id] += 1
    print(f"[{name} @ {result.worker_id}] {question!r} -> {output.text[:80]!r}", flush=True)


async def drive(address: str, keys: dict[str, str], rounds: int, max_tokens: int):
    tallies = {name: ClientTally() for name in CLIENTS}
    clients = {name: RouterClient.connect(address, keys[name]) for name in CLIENTS}
    try:
        for round_index in range(rounds):
            question = QUESTIONS[round_index % len(QUESTIONS)]
            await asyncio.gather(
                *(
                    one_request(clients[name], name, system, question, tallies[name], max_tokens)
                    for name, system in CLIENTS.items()
                )
            )
        # A tenant's status shows only its own ledger record: ask as each client.
        statuses = {name: await client.status() for name, client in clients.items()}
    finally:
        for client in clients.values():
            await client.close()
    return tallies, statuses


def print_table(tallies: dict[str, ClientTally], statuses: dict, wall_s: float) -> None:
    service = {
        name: next((c.service for c in status.clients if c.client_id == name), 0.0)
        for name, status in statuses.items()
    }
    status = next(iter(statuses.values()))
    print()
    header = (
        f"{'client':<14} {'weight':>6} {'reqs':>4} {'service':>8} {'svc/wt':>7} {'prompt':>7} {'cached':>7} "
        f"{'hit %':>6} {'output':>7} {'p50 TTFT ms':>12} {'p50 total ms':>13}  workers"
    )
    print(header)
    print("-" * len(header))
    for name, t in tallies.items():
        hit = 100 * t.cached_tokens / t.prompt_tokens if t.prompt_tokens else 0.0
        workers = ", ".join(f"{w}×{n}" for w, n in sorted(t.workers.items()))
        print(
            f"{name:<14} {WEIGHTS[name]:>6.1f} {t.requests:>4} {service.get(name, 0.0):>8.0f} "
            f"{service.get(name, 0.0) / WEIGHTS[name]:>7.0f} "
            f"{t.prompt_tokens:>7} {t.cached_tokens:>7} {hit:>6.1f} {t.completion_tokens:>7} "
            f"{statistics.median(t.ttft_ms):>12.0f} {statistics.median(t.total_ms):>13.0f}  {workers}"
        )
    print(COLUMNS)
    out = sum(t.completion_tokens for t in tallies.values())
    healthy = sum(w.healthy for w in status.workers)
    print(
        f"\nrouting policy: {status.policy} · {healthy} healthy workers · shared state in Redis: "
        f"{'yes' if status.shared_state_connected else 'NO (degraded)'}"
    )
    print(f"{out} output tokens in {wall_s:.1f} s ({out / wall_s:.1f} tokens/s)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=40)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    keys = {name: f"demo-key-{name}" for name in CLIENTS}
    run_dir = Path(tempfile.mkdtemp(prefix="radixfair-demo-"))
    config = LocalStackConfig(
        run_dir=run_dir,
        workers=args.workers,
        router_port=free_port(),
        policy="d2lpm",
        api_keys=tuple(ApiKeyConfig(keys[n], n, WEIGHTS[n]) for n in CLIENTS),
    )
    print(
        f"starting Redis, a D²LPM router and {args.workers} workers with SmolLM2-135M-Instruct "
        f"(logs in {run_dir}) ...",
        flush=True,
    )
    stack = LocalStack(config)
    stack.start()
    try:
        start = time.monotonic()
        tallies, statuses = asyncio.run(drive(stack.address, keys, args.rounds, args.max_tokens))
        print_table(tallies, statuses, time.monotonic() - start)
    finally:
        stack.stop()


if __name__ == "__main__":
    main()
