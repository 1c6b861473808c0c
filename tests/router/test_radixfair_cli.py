"""`radixfair up`, `generate` and `status` as a user runs them: real processes end to end."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from support.ports import free_port

CLI = [sys.executable, "-m", "radixfair.cli"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); its state letter says it is gone.
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(")")[-1].split()[0] != "Z"


def test_up_serves_generate_and_status_then_stops_every_child(tiny_model_dir, tmp_path):
    port, ready = free_port(), tmp_path / "ready.json"
    up = subprocess.Popen(
        [*CLI, "up", "--workers", "2", "--model", str(tiny_model_dir), "--port", str(port),
         "--policy", "cache_aware", "--api-key", "dana=dana-key:2", "--api-key", "eve=eve-key",
         "--run-dir", str(tmp_path / "run"), "--ready-file", str(ready)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not ready.exists() and up.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert ready.exists(), up.stdout.read().decode() if up.poll() is not None else "not ready in time"
        stack = json.loads(ready.read_text())
        router = stack["router"]

        prompt = ["Once upon a time", "--max-tokens", "5"]
        generated = subprocess.run(
            [*CLI, "generate", "--router", router, "--api-key", "dana-key", *prompt],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        refused = subprocess.run(
            [*CLI, "generate", "--router", router, "--api-key", "wrong", "hi"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        status = subprocess.run(
            # A tenant's status shows its own row (issue 12.4): dana asks about dana.
            [*CLI, "status", "--router", router, "--api-key", "dana-key"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        up.send_signal(signal.SIGTERM)
        up.wait(timeout=60)

    assert generated.returncode == 0, generated.stderr
    assert "5 generated" in generated.stderr
    assert refused.returncode == 1 and "UNAUTHENTICATED" in refused.stderr
    assert status.returncode == 0, status.stderr
    assert "policy: cache_aware" in status.stdout and "shared state: connected" in status.stdout
    dana = next(line for line in status.stdout.splitlines() if line.startswith("dana"))
    assert dana.split()[1:3] == ["2", "1"]  # weight 2, one request
    assert sum(" yes " in line for line in status.stdout.splitlines()) == 2
    assert up.returncode == 0
    assert not any(_alive(pid) for pid in stack["pids"].values())


def test_up_reads_the_same_config_files_as_the_containers(tiny_model_dir, tmp_path):
    """deploy/config/*.yaml drive `up` as they drive the images; up only sets addresses, Redis and keys."""
    repo = Path(__file__).resolve().parents[2]
    port, ready = free_port(), tmp_path / "ready.json"
    # The container's router file, with another policy, proves the file (not up's default) decides it.
    router_yaml = (repo / "deploy/config/router.yaml").read_text()
    assert "name: d2lpm" in router_yaml
    router_file = tmp_path / "router.yaml"
    router_file.write_text(router_yaml.replace("name: d2lpm", "name: least_load"))
    up = subprocess.Popen(
        [*CLI, "up", "--workers", "2", "--model", str(tiny_model_dir), "--port", str(port),
         "--router-config", str(router_file),
         "--worker-config", str(repo / "deploy/config/worker.yaml"),
         "--api-key", "fay=fay-key", "--run-dir", str(tmp_path / "run"), "--ready-file", str(ready)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not ready.exists() and up.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert ready.exists(), up.stdout.read().decode() if up.poll() is not None else "not ready in time"
        router = json.loads(ready.read_text())["router"]
        generated = subprocess.run(
            [*CLI, "generate", "--router", router, "--api-key", "fay-key", "hello", "--max-tokens", "3"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        status = subprocess.run(
            [*CLI, "status", "--router", router, "--api-key", "fay-key"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    finally:
        up.send_signal(signal.SIGTERM)
        up.wait(timeout=60)
    assert generated.returncode == 0, generated.stderr
    # The policy comes from the file, and both local workers registered.
    assert "policy: least_load" in status.stdout, status.stdout
    assert sum(" yes " in line for line in status.stdout.splitlines()) == 2, status.stdout
