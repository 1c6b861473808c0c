"""`radixfair up` serves the router's OpenAI-compatible HTTP API, prints where, and refuses a bad port."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from concurrent import futures

import grpc
import openai
import pytest
from support.ports import free_port

CLI = [sys.executable, "-m", "radixfair.cli"]


def test_up_prints_the_http_api_and_the_openai_sdk_chats_through_it(tiny_model_dir, tmp_path):
    port, http_port, ready = free_port(), free_port(), tmp_path / "ready.json"
    up = subprocess.Popen(
        [*CLI, "up", "--workers", "1", "--model", str(tiny_model_dir), "--port", str(port),
         "--http-port", str(http_port), "--api-key", "gil=gil-key",
         "--run-dir", str(tmp_path / "run"), "--ready-file", str(ready)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while not ready.exists() and up.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert ready.exists(), up.stdout.read() if up.poll() is not None else "not ready in time"
        base_url = json.loads(ready.read_text())["http_api"]
        client = openai.OpenAI(base_url=base_url, api_key="gil-key", max_retries=0, timeout=120)
        model = client.models.list().data[0].id
        reply = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Hello!"}], max_tokens=3, temperature=0
        )
    finally:
        up.send_signal(signal.SIGTERM)
        output, _ = up.communicate(timeout=60)
    assert base_url == f"http://127.0.0.1:{http_port}/v1"
    assert f"serving on 127.0.0.1:{port} (gRPC) and {base_url} (OpenAI-compatible HTTP)" in output
    assert model == tiny_model_dir.name and 1 <= reply.usage.completion_tokens <= 3
    assert up.returncode == 0


@pytest.mark.parametrize("taken", [False, True])
def test_up_with_a_bad_or_taken_http_port_exits_with_one_line(taken, tmp_path):
    with socket.socket() as holder:
        if taken:
            holder.bind(("0.0.0.0", 0))
            holder.listen()
            port, expected = holder.getsockname()[1], "already in use"
        else:
            port, expected = 70000, "HTTP port must be 0 (off) or 1-65535"
        result = subprocess.run(
            [*CLI, "up", "--port", str(free_port()), "--http-port", str(port), "--run-dir", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("radixfair: error:") and expected in line, line


@pytest.mark.parametrize("holder", ["plain socket", "gRPC server with port reuse"])
def test_a_router_whose_http_port_is_taken_exits_with_one_line(holder, smollm2_dir):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    with socket.socket() as plain:
        if holder == "plain socket":
            plain.bind(("0.0.0.0", 0))
            plain.listen()
            taken = plain.getsockname()[1]
        else:  # gRPC's defaults turn SO_REUSEPORT on: a server that also did would bind beside it
            taken = server.add_insecure_port("127.0.0.1:0")
            server.start()
        settings = {
            "port": free_port(),
            "http_port": taken,
            "tokenizer_dir": smollm2_dir,
            "ledger.store": "memory",
        }
        args = [arg for key, value in settings.items() for arg in ("--set", f"{key}={value}")]
        result = subprocess.run(
            [sys.executable, "-m", "radixfair_router", *args], capture_output=True, text=True, timeout=240
        )
        server.stop(grace=None)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("radixfair-router: error:") and f"port {taken}" in line, line
    assert "OpenAI-compatible HTTP API" in line and "already in use" in line, line
