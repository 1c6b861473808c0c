"""`radixfair up` supervises its children as a process manager would (issue 12, point 9).

A worker killed with SIGKILL is restarted, registers again and serves; the
rest of the stack never stopped. Ctrl-C then stops every child, restarted
ones included.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from support.ports import free_port
from support.processes import is_serving

CLI = [sys.executable, "-m", "radixfair.cli"]
# Safety limits only: each wait ends as soon as its condition holds.
WAIT_S = 240


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")  # a zombie still answers kill(0)
    return stat.exists() and stat.read_text().split(")")[-1].split()[0] != "Z"


def _wait_for(condition, what: str, up: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert up.poll() is None, (
            f"up exited ({up.returncode}) waiting for {what}:\n{log.read_text()[-4000:]}"
        )
        assert time.monotonic() < deadline, f"no {what}:\n{log.read_text()[-4000:]}"
        time.sleep(0.3)


def _generate(router: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "generate", "--router", router, "--api-key", "kim-key", "Hello", "--max-tokens", "3"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_a_killed_worker_is_restarted_and_serves_and_ctrl_c_stops_everything(tiny_model_dir, tmp_path):
    ready, log = tmp_path / "ready.json", tmp_path / "up.log"
    with log.open("wb") as out:
        up = subprocess.Popen(
            [*CLI, "up", "--workers", "1", "--model", str(tiny_model_dir), "--port", str(free_port()),
             "--http-port", str(free_port()), "--policy", "least_load", "--api-key", "kim=kim-key",
             "--run-dir", str(tmp_path / "run"), "--ready-file", str(ready)],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        _wait_for(ready.exists, "ready file", up, log)
        stack = json.loads(ready.read_text())
        first_worker = stack["pids"]["worker-0"]

        os.kill(first_worker, signal.SIGKILL)
        _wait_for(lambda: "worker-0 restarted" in log.read_text(), "restart of worker-0", up, log)
        # The restarted worker boots on the same address; a generation is tried once it serves.
        _wait_for(lambda: is_serving(stack["worker_addresses"][0]), "restarted worker serving", up, log)
        _wait_for(lambda: _generate(stack["router"]).returncode == 0, "generation after restart", up, log)
        started = re.findall(r"started worker-0 \(pid (\d+)\)", log.read_text())
        restarted_worker = int(started[-1])
    finally:
        up.send_signal(signal.SIGINT)
        up.wait(timeout=120)

    text = log.read_text()
    assert "worker-0 exited with -9" in text
    assert restarted_worker != first_worker
    # The rest of the stack was never restarted: one start each.
    assert len(re.findall(r"started router \(pid", text)) == 1
    assert up.returncode == 0, text[-4000:]
    assert "Traceback" not in text
    pids = [*stack["pids"].values(), restarted_worker]
    assert not any(_alive(pid) for pid in pids)


def test_ctrl_c_while_up_is_starting_stops_what_started_in_one_line(tiny_model_dir, tmp_path):
    log = tmp_path / "up.log"
    with log.open("wb") as out:
        up = subprocess.Popen(
            [*CLI, "up", "--workers", "1", "--model", str(tiny_model_dir), "--port", str(free_port()),
             "--http-port", str(free_port()), "--run-dir", str(tmp_path / "run")],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        # The router starts after the model's first worker serves: interrupt once it has started.
        _wait_for(lambda: "started router" in log.read_text(), "router start", up, log)
        up.send_signal(signal.SIGINT)
        up.wait(timeout=120)
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
    text = log.read_text()
    assert up.returncode == 130, text[-4000:]
    assert text.strip().splitlines()[-1] == "radixfair: error: interrupted"
    assert "Traceback" not in text and "serving on" not in text
    pids = [int(pid) for pid in re.findall(r"started \S+ \(pid (\d+)\)", text)]
    assert pids and not any(_alive(pid) for pid in pids)
