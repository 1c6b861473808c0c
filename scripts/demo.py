"""The README's main job: serve the real SmolLM2-135M-Instruct and drive a multi-client workload.

Starts a worker process on this machine, streams chat completions for
several clients whose requests share per-client system prompts, and prints
per-client tokens, cache hits and latency.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from radixfair.v1 import generation_pb2, worker_pb2, worker_pb2_grpc

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


@dataclass
class ClientTally:
    requests: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    ttft_ms: list[float] = field(default_factory=list)
    total_ms: list[float] = field(default_factory=list)


async def one_request(stub, client: str, system: str, question: str, tally: ClientTally, max_tokens: int):
    chat = generation_pb2.ChatPrompt(
        messages=[
            generation_pb2.ChatMessage(role="system", content=system),
            generation_pb2.ChatMessage(role="user", content=question),
        ]
    )
    request = worker_pb2.GenerateRequest(
        client_id=client,
        prompt=generation_pb2.Prompt(chat=chat),
        sampling=generation_pb2.SamplingParams(max_tokens=max_tokens, temperature=0.0),
    )
    text = []
    async for message in stub.Generate(request, timeout=600):
        if message.HasField("delta"):
            text.append(message.delta.text)
        else:
            result = message.result
    tally.requests += 1
    tally.prompt_tokens += result.usage.prompt_tokens
    tally.cached_tokens += result.usage.cached_tokens
    tally.completion_tokens += result.usage.completion_tokens
    tally.ttft_ms.append(result.timings.time_to_first_token_ms)
    tally.total_ms.append(result.timings.total_ms)
    print(f"[{client}] {question!r} -> {''.join(text)[:90]!r}", flush=True)


async def drive(address: str, rounds: int, max_tokens: int) -> dict[str, ClientTally]:
    tallies = {client: ClientTally() for client in CLIENTS}
    async with grpc.aio.insecure_channel(address) as channel:
        stub = worker_pb2_grpc.WorkerServiceStub(channel)
        for round_index in range(rounds):
            question = QUESTIONS[round_index % len(QUESTIONS)]
            await asyncio.gather(
                *(
                    one_request(stub, client, system, question, tallies[client], max_tokens)
                    for client, system in CLIENTS.items()
                )
            )
    return tallies


def print_table(tallies: dict[str, ClientTally], wall_s: float) -> None:
    print()
    header = (
        f"{'client':<14} {'reqs':>4} {'prompt':>7} {'cached':>7} {'hit %':>6} {'output':>7} "
        f"{'p50 TTFT ms':>12} {'p50 total ms':>13}"
    )
    print(header)
    print("-" * len(header))
    for client, t in tallies.items():
        hit = 100 * t.cached_tokens / t.prompt_tokens if t.prompt_tokens else 0.0
        print(
            f"{client:<14} {t.requests:>4} {t.prompt_tokens:>7} {t.cached_tokens:>7} {hit:>6.1f} "
            f"{t.completion_tokens:>7} {statistics.median(t.ttft_ms):>12.0f} "
            f"{statistics.median(t.total_ms):>13.0f}"
        )
    out = sum(t.completion_tokens for t in tallies.values())
    print(f"\n{out} output tokens in {wall_s:.1f} s ({out / wall_s:.1f} tokens/s), scheduler: DLPM")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=48)
    args = parser.parse_args()
    port = free_port()
    log = Path(tempfile.gettempdir()) / f"radixfair-demo-worker-{port}.log"
    print(f"starting a worker with SmolLM2-135M-Instruct on 127.0.0.1:{port} (log: {log})", flush=True)
    with log.open("wb") as log_file:
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "radixfair_worker",
                "--set",
                f"port={port}",
                "--set",
                "worker_id=demo-worker",
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until_serving(f"127.0.0.1:{port}", worker, log)
        start = time.monotonic()
        tallies = asyncio.run(drive(f"127.0.0.1:{port}", args.rounds, args.max_tokens))
        print_table(tallies, time.monotonic() - start)
    finally:
        worker.terminate()
        worker.wait(timeout=30)


def wait_until_serving(address: str, process: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"worker exited early:\n{log.read_text()[-3000:]}")
        try:
            with grpc.insecure_channel(address) as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
        except grpc.RpcError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"worker did not start within {timeout}s")


if __name__ == "__main__":
    main()
