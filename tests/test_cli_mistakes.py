"""A user's mistake ends in one clear line, never a traceback (issue 12, point 14).

Each case runs the installed command in a subprocess, as a user would.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.ports import free_port
from support.processes import ServiceProcess, start_service

CLI = [sys.executable, "-m", "radixfair.cli"]
API_KEY = "mistakes-key"


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=300)


def _one_line_error(result: subprocess.CompletedProcess[str], status: int = 2) -> str:
    """The error line, after checking the status and that nothing else went wrong on the way."""
    assert result.returncode == status, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return result.stderr.strip().splitlines()[-1]


def test_up_with_a_misspelt_routing_policy_names_the_closest_before_starting(tmp_path):
    run_dir = tmp_path / "run"
    result = _run([*CLI, "up", "--policy", "d2lmp", "--run-dir", str(run_dir)])
    line = _one_line_error(result)
    assert line.startswith(
        "radixfair: error: router config: unknown routing policy 'd2lmp'; did you mean 'd2lpm'?"
    ), line
    assert not list(run_dir.glob("*.log"))  # nothing was started


def test_up_with_a_misspelt_worker_scheduling_policy_names_the_closest(tmp_path):
    run_dir = tmp_path / "run"
    result = _run([*CLI, "up", "--worker-set", "engine.scheduler.policy=dlmp", "--run-dir", str(run_dir)])
    line = _one_line_error(result)
    assert "unknown scheduling policy 'dlmp'; did you mean 'dlpm'?" in line, line
    assert not list(run_dir.glob("*.log"))


def test_up_with_a_misspelt_config_field_names_the_closest(tmp_path):
    result = _run([*CLI, "up", "--worker-set", "engine.schedular.policy=dlpm", "--run-dir", str(tmp_path)])
    line = _one_line_error(result)
    assert "unknown field(s) ['schedular'] (did you mean 'scheduler'?)" in line, line


def test_worker_with_a_misspelt_scheduling_policy_exits_with_one_line_before_loading_anything():
    # No model at this path: the policy is checked first, so the model is never looked for.
    settings = ["model=/nonexistent/model", f"port={free_port()}", "engine.scheduler.policy=dlmp"]
    args = [arg for item in settings for arg in ("--set", item)]
    line = _one_line_error(_run([sys.executable, "-m", "radixfair_worker", *args]))
    assert line.startswith(
        "radixfair-worker: error: unknown scheduling policy 'dlmp'; did you mean 'dlpm'?"
    ), line


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--workers", "-1"], "workers must be 0 or more, got -1"),
        (["--port", "70000"], "the router port must be 1-65535, got 70000"),
        (["--api-key", "ann=key:heavy"], "--api-key wants CLIENT=KEY[:WEIGHT]"),
        (["--router-set", "policy.quantum"], "settings are KEY=VALUE"),
        # Keys that parse but the router would refuse: found by AuthConfig itself, before anything starts.
        (["--api-key", "ann=key:nan"], "client 'ann': weight must be a positive number"),
        (["--api-key", "ann=same", "--api-key", "bob=same"], "api key for client 'bob' is listed twice"),
        (["--api-key", "ann=k1", "--api-key", "ann=k2:2"], "client 'ann' has keys with different weights"),
    ],
)
def test_up_with_a_bad_flag_exits_with_one_line(flags, expected, tmp_path):
    line = _one_line_error(_run([*CLI, "up", *flags, "--run-dir", str(tmp_path)]))
    assert line.startswith("radixfair: error:") and expected in line, line
    assert not list(tmp_path.glob("*.log"))


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        (["policy.name=d2lmp"], "unknown routing policy 'd2lmp'"),
        (["polcy.name=d2lpm"], "did you mean 'policy'?"),
        (["port.number=5"], "config.port: expected int"),
        (["port=5", "port.number=5"], "port is a value, not a section"),
        (["port=[1"], "is not valid YAML"),
        (["nothing-to-set"], "settings are KEY=VALUE"),
    ],
)
def test_router_with_a_bad_setting_exits_with_one_line(settings, expected):
    args = [arg for item in settings for arg in ("--set", item)]
    line = _one_line_error(_run([sys.executable, "-m", "radixfair_router", *args]))
    assert line.startswith("radixfair-router: error:") and expected in line, line


def test_router_with_a_missing_config_file_exits_with_one_line(tmp_path):
    missing = tmp_path / "router.yaml"
    line = _one_line_error(_run([sys.executable, "-m", "radixfair_router", "--config", str(missing)]))
    assert f"cannot read config file {missing}" in line, line


def test_up_help_shows_each_option_default():
    result = _run([*CLI, "up", "--help"])
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    for shown in ("(default: d2lpm)", "(default: 2)", "(default: 50051)", "(default: 4096.0)"):
        assert shown in text, text


@pytest.mark.parametrize(
    "module",
    [
        "radixfair.cli",
        "radixfair_router",
        "radixfair_worker",
        "radixfair_distiller",
        "radixfair_distiller.cli",
    ],
)
def test_every_usage_line_names_a_command_that_is_installed(module):
    result = _run([sys.executable, "-m", module, "--help"])
    assert result.returncode == 0, result.stderr
    prog = result.stdout.split("usage: ", 1)[1].split(" [", 1)[0].split()
    if prog[:2] == ["python", "-m"]:
        assert importlib.util.find_spec(prog[2]) is not None, prog
    else:
        scripts = str(Path(sys.executable).parent)
        assert shutil.which(prog[0], path=scripts) or shutil.which(prog[0]), prog


# ---- commands against a running router and worker ----------------------------------------------


@pytest.fixture(scope="module")
def serving(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real router with one tiny worker behind it; yields the router's address."""
    logs = tmp_path_factory.mktemp("serving")
    worker_port, router_port = free_port(), free_port()
    worker = start_service(
        "radixfair_worker",
        ["--set", f"model={tiny_model_dir}", "--set", f"port={worker_port}", "--set", "worker_id=w0"],
        f"127.0.0.1:{worker_port}",
        logs / "worker.log",
    )
    router: ServiceProcess | None = None
    try:
        settings = {
            "port": router_port,
            "tokenizer_dir": tiny_model_dir,
            "ledger.store": "memory",
            "auth.api_keys": f'[{{"key": "{API_KEY}", "client_id": "tess"}}]',
            "registry.workers": f'[{{"worker_id": "w0", "address": "127.0.0.1:{worker_port}"}}]',
        }
        args = [arg for key, value in settings.items() for arg in ("--set", f"{key}={value}")]
        router = start_service("radixfair_router", args, f"127.0.0.1:{router_port}", logs / "router.log")
        yield router.address
    finally:
        if router is not None:
            router.stop()
        worker.stop()


def test_status_into_a_closed_pipe_exits_quietly(serving):
    """`radixfair status | head -0`: the reader is gone before the first line is written."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run(
            [*CLI, "status", "--router", serving, "--api-key", API_KEY],
            stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=300,
        )  # fmt: skip
    finally:
        os.close(write_end)
    assert result.returncode == 141, result.stderr
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr, result.stderr


def test_ctrl_c_during_generate_ends_in_one_line(serving):
    generate = subprocess.Popen(
        [*CLI, "generate", "--router", serving, "--api-key", API_KEY, "Once upon a time",
         "--max-tokens", "900"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # A user at a terminal: Ctrl-C is not ignored. A suite started as a background job of a
        # non-interactive shell passes SIGINT down ignored, and the generation then simply finishes.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    try:
        generate.stdout.read(1)  # the first streamed text: the generation is under way
        generate.send_signal(signal.SIGINT)
        _, stderr = generate.communicate(timeout=120)
    finally:
        if generate.poll() is None:
            generate.kill()
            generate.wait()
    result = subprocess.CompletedProcess(generate.args, generate.returncode, "", stderr)
    assert _one_line_error(result, status=130) == "radixfair: error: interrupted"


def test_status_of_a_router_that_is_not_there_is_one_line():
    line = _one_line_error(
        _run([*CLI, "status", "--router", f"127.0.0.1:{free_port()}", "--api-key", API_KEY]), status=1
    )
    assert line.startswith("radixfair: error: UNAVAILABLE"), line
