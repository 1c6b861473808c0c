"""The shipped `radixfair up` stack (issue 12): registration needs the stack's own token, and a
client hanging up mid-stream, over gRPC or the HTTP API, logs no ERROR and no traceback.

One stack serves both tests; the hang-up test stops it and reads every child's log, so anything
logged while the hang-ups were handled, or while the stack shut down after them, is in what it reads.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest
from support.ports import free_port

from radixfair.auth import bearer_metadata
from radixfair.client import ClientConfig, RouterClient, build_prompt, build_sampling
from radixfair.v1 import router_pb2, router_pb2_grpc

CLI = [sys.executable, "-m", "radixfair.cli"]
API_KEY = "hangup-key"
# Bound on start-up and shutdown of the stack on a loaded 2-core machine.
WAIT_S = 240.0
# An ERROR or CRITICAL record of our log format, or an error line of gRPC's C core.
ERROR_LINE = re.compile(r" (ERROR|CRITICAL) |^E\d{4} ")


@dataclass
class UpStack:
    process: subprocess.Popen
    run_dir: Path
    grpc_address: str
    http_base: str
    model: str

    def stop(self) -> str:
        """Stops the stack (as Ctrl-C would); returns up's own output."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        output, _ = self.process.communicate(timeout=WAIT_S)
        return output or ""

    def logs(self) -> dict[str, str]:
        return {path.name: path.read_text(errors="replace") for path in sorted(self.run_dir.glob("*.log"))}


@pytest.fixture(scope="module")
def up_stack(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpStack]:
    tmp = tmp_path_factory.mktemp("up")
    port, http_port, ready = free_port(), free_port(), tmp / "ready.json"
    process = subprocess.Popen(
        [*CLI, "up", "--workers", "1", "--model", str(tiny_model_dir), "--port", str(port),
         "--http-port", str(http_port), "--api-key", f"hangup={API_KEY}",
         "--run-dir", str(tmp / "run"), "--ready-file", str(ready)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    stack = UpStack(
        process, tmp / "run", f"127.0.0.1:{port}", f"http://127.0.0.1:{http_port}/v1", tiny_model_dir.name
    )
    try:
        deadline = time.monotonic() + WAIT_S
        while not ready.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert ready.exists(), stack.stop()[-3000:]
        assert json.loads(ready.read_text())["http_api"] == stack.http_base
        yield stack
    finally:
        stack.stop()


async def register(address: str, metadata: list[tuple[str, str]] | None, worker_id: str) -> grpc.StatusCode:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        try:
            await stub.RegisterWorker(
                router_pb2.RegisterWorkerRequest(worker_id=worker_id, address="127.0.0.1:1"),
                metadata=metadata,
                timeout=30,
            )
        except grpc.aio.AioRpcError as error:
            return error.code()
    return grpc.StatusCode.OK


def test_the_up_stack_refuses_a_registration_without_its_token(up_stack):
    attempts = [
        (None, "intruder"),
        (bearer_metadata(API_KEY), "intruder"),  # a tenant's key is no worker identity
        (bearer_metadata("a-guessed-token"), "intruder"),
        (None, "worker-0"),  # taking over the stack's own worker
        (bearer_metadata(API_KEY), "worker-0"),
    ]

    async def scenario():
        codes = [await register(up_stack.grpc_address, metadata, wid) for metadata, wid in attempts]
        async with RouterClient(ClientConfig(up_stack.grpc_address, API_KEY, timeout_s=120)) as client:
            served = await client.generate("still served by the stack's worker", max_tokens=2)
        return codes, served.result.worker_id

    codes, served_by = asyncio.run(scenario())
    assert all(
        code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED) for code in codes
    ), codes
    assert served_by == "worker-0"


async def hang_up_grpc(address: str, after_tokens: int) -> None:
    """Opens a long stream and cancels it after ``after_tokens`` tokens (0: before any output)."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        request = router_pb2.RouterServiceGenerateRequest(
            prompt=build_prompt("tell me a very long story"),
            sampling=build_sampling(max_tokens=4000, ignore_eos=True),
        )
        call = stub.Generate(request, metadata=bearer_metadata(API_KEY))
        received = 0
        while received < after_tokens:
            message = await call.read()
            received += len(message.delta.token_ids)
        if after_tokens == 0:
            await call.initial_metadata()  # the router has the call
        call.cancel()


def http_body(model: str, stream: bool) -> dict[str, object]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": "tell me a very long story"}],
        "max_tokens": 4000,
        "ignore_eos": True,
        "stream": stream,
    }


async def hang_up_http_stream(http: httpx.AsyncClient, base: str, model: str) -> None:
    """Reads the first event of a streamed chat completion, then closes the connection."""
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with http.stream(
        "POST", f"{base}/chat/completions", json=http_body(model, True), headers=headers
    ) as reply:
        assert reply.status_code == 200, await reply.aread()
        async for line in reply.aiter_lines():
            if line.startswith("data: {"):
                break


def hang_up_http_before_the_reply(base: str, model: str) -> None:
    """Sends a whole non-streamed request on a raw socket and closes it without reading the reply."""
    host, port = base.removeprefix("http://").split("/")[0].split(":")
    body = json.dumps(http_body(model, False)).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {API_KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head + body)


def test_clients_hanging_up_mid_stream_log_no_error_in_any_service(up_stack):
    async def scenario():
        address = up_stack.grpc_address
        await asyncio.gather(*(hang_up_grpc(address, n) for n in (0, 1, 3, 8)))
        async with httpx.AsyncClient(timeout=120) as http:
            await asyncio.gather(
                *(hang_up_http_stream(http, up_stack.http_base, up_stack.model) for _ in range(3))
            )
        await asyncio.gather(
            *(
                asyncio.to_thread(hang_up_http_before_the_reply, up_stack.http_base, up_stack.model)
                for _ in range(2)
            )
        )
        # The stack still serves after the hang-ups, on both APIs.
        async with RouterClient(ClientConfig(address, API_KEY, timeout_s=120)) as client:
            done = await client.generate("and one that finishes", max_tokens=3, ignore_eos=True)
        async with httpx.AsyncClient(timeout=120) as http:
            reply = await http.post(
                f"{up_stack.http_base}/chat/completions",
                json={**http_body(up_stack.model, False), "max_tokens": 3},
                headers={"Authorization": f"Bearer {API_KEY}"},
            )
        return done.result.usage.completion_tokens, reply.status_code

    completion_tokens, http_status = asyncio.run(scenario())
    up_output = up_stack.stop()
    logs = {**up_stack.logs(), "radixfair up": up_output}
    assert completion_tokens == 3 and http_status == 200
    assert {"router.log", "worker-0.log"} <= set(logs), sorted(logs)
    for name, text in logs.items():
        bad = [line for line in text.splitlines() if ERROR_LINE.search(line) or "Traceback" in line]
        assert not bad, f"{name}:\n" + "\n".join(bad[:20])
