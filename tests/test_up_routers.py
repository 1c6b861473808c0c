"""`radixfair up --routers 2`: two router processes serve one port (SO_REUSEPORT) on one Redis ledger.

One real stack started by the CLI (Redis, two routers, one worker). Clients know one address. Each
request goes over a connection of its own, which the kernel hands to one of the routers: the requests
are served by both router processes (each leaves its own replica record in the shared ledger), and
the ledger books exactly the requests and output tokens the clients received, whichever router
served them.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
import redis
from support.ports import free_port

from radixfair.auth import bearer_metadata
from radixfair.client import build_prompt, build_sampling
from radixfair.v1 import router_pb2, router_pb2_grpc

CLI = [sys.executable, "-m", "radixfair.cli"]
API_KEY = "routers-tenant-key"
WAIT_S = 240.0
REQUESTS = 24
MAX_TOKENS = 3


def _start_up(tiny_model_dir: Path, tmp: Path) -> tuple[subprocess.Popen, dict]:
    ready = tmp / "ready.json"
    process = subprocess.Popen(
        [*CLI, "up", "--routers", "2", "--workers", "1", "--model", str(tiny_model_dir),
         "--port", str(free_port()), "--http-port", str(free_port()), "--api-key", f"tenant={API_KEY}",
         "--run-dir", str(tmp / "run"), "--ready-file", str(ready)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + WAIT_S
    while not ready.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    if not ready.exists():
        _stop(process)
        pytest.fail(f"up --routers 2 never became ready:\n{(process.stdout.read() or '')[-3000:]}")
    return process, json.loads(ready.read_text())


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
    process.communicate(timeout=WAIT_S)


async def _one_request(address: str, index: int) -> int:
    """One request on a connection of its own; the output tokens received."""
    options = [("grpc.use_local_subchannel_pool", 1)]
    async with grpc.aio.insecure_channel(address, options=options) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        request = router_pb2.RouterServiceGenerateRequest(
            request_id=f"routers-{index}",
            prompt=build_prompt(f"request {index} through two routers"),
            sampling=build_sampling(max_tokens=MAX_TOKENS, ignore_eos=True),
        )
        received = 0
        async for message in stub.Generate(request, metadata=bearer_metadata(API_KEY), timeout=60):
            if message.HasField("delta"):
                received += len(message.delta.token_ids)
        return received


async def _requests(address: str) -> list[int]:
    # A few at a time, so the routers' connections open and close while others are served.
    received: list[int] = []
    for start in range(0, REQUESTS, 4):
        received += await asyncio.gather(*(_one_request(address, i) for i in range(start, start + 4)))
    return received


def test_two_routers_on_one_port_both_serve_and_the_shared_ledger_books_exactly_what_was_received(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    process, ready = _start_up(tiny_model_dir, tmp_path)
    try:
        assert ready["routers"] == 2 and {"router", "router-1"} <= set(ready["pids"])
        received = asyncio.run(_requests(str(ready["router"])))
        # Settlement runs after the result is sent: give the routers a moment to book it.
        store = redis.Redis.from_url(str(ready["redis"]))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            client = {k.decode(): float(v) for k, v in store.hgetall("radixfair:client:tenant").items()}
            if round(client.get("completion_tokens", 0)) == sum(received):
                break
            time.sleep(0.2)
        # Each router process books under its own replica id: both did work.
        served_by = [
            key for key in store.scan_iter("radixfair:applied:*") if int(store.hget(key, "hw") or 0) > 0
        ]
    finally:
        _stop(process)
    assert received == [MAX_TOKENS] * REQUESTS
    assert len(served_by) == 2, served_by
    assert round(client["requests"]) == REQUESTS
    assert round(client["completion_tokens"]) == sum(received)
