"""`radixfair up` signs tenant identity on the router -> worker hop by default (issue 12, review finding 6).

The stack makes its own secret, so a process that reaches a worker's port directly cannot pose
as a tenant: the worker answers UNAUTHENTICATED, while the same prompt through the router is served.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import grpc
import pytest
from support.ports import free_port

from radixfair.v1 import generation_pb2, worker_pb2, worker_pb2_grpc

CLI = [sys.executable, "-m", "radixfair.cli"]
WAIT_S = 240  # safety limit only: the wait ends when the ready file appears


def test_up_workers_refuse_unsigned_callers_and_serve_the_router(tiny_model_dir, tmp_path):
    ready, log = tmp_path / "ready.json", tmp_path / "up.log"
    with log.open("wb") as out:
        up = subprocess.Popen(
            [*CLI, "up", "--workers", "1", "--model", str(tiny_model_dir), "--port", str(free_port()),
             "--http-port", "0", "--api-key", "kim=kim-key", "--run-dir", str(tmp_path / "run"),
             "--ready-file", str(ready)],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + WAIT_S
        while not ready.exists():
            assert up.poll() is None, log.read_text()[-4000:]
            assert time.monotonic() < deadline, log.read_text()[-4000:]
            time.sleep(0.3)
        stack = json.loads(ready.read_text())
        served = subprocess.run(
            [*CLI, "generate", "--router", stack["router"], "--api-key", "kim-key", "Hello",
             "--max-tokens", "3"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert served.returncode == 0, served.stderr

        (worker,) = stack["worker_addresses"]
        with grpc.insecure_channel(worker) as channel:
            request = worker_pb2.GenerateRequest(
                request_id="direct",
                client_id="kim",
                prompt=generation_pb2.Prompt(text="Hello"),
                sampling=generation_pb2.SamplingParams(max_tokens=3),
            )
            with pytest.raises(grpc.RpcError) as refused:
                list(worker_pb2_grpc.WorkerServiceStub(channel).Generate(request, timeout=60))
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, refused.value.details()
    finally:
        up.send_signal(signal.SIGINT)
        up.wait(timeout=120)
