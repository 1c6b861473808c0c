"""`radixfair distill RECIPE` (the shared CLI) and the distiller's Prometheus metrics, on real processes.

The shared CLI runs a recipe in its own process through the distiller
package, or submits it to a running distiller with --server (which must work
without torch); the distiller serves /metrics on its metrics port, read here
over HTTP while a job trains and after jobs end. The in-process run calls the
CLI's ``main`` in the test process (torch is loaded here already; a process
of its own would import it again for nothing); the calls that must not import
torch or the distiller run as processes with that module blocked.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import grpc
import pytest
from support.ports import free_port
from support.processes import ServiceProcess, start_service

from radixfair.cli import main as radixfair_main
from radixfair.v1 import distiller_pb2, distiller_pb2_grpc

BATCH, SEQ_LEN, STEPS = 2, 48, 3


def recipe_text(teacher: Path, name: str, steps: int = STEPS) -> str:
    return f"""
name: {name}
teacher: {teacher}
prune: {{depth: {{keep_layers: 1}}, calibration_sequences: 2}}
distill: {{steps: {steps}, batch_size: {BATCH}, checkpoint_every: 2}}
data: {{seq_len: {SEQ_LEN}, text_max_files: 10, chat_prompts: 30, response_max_new_tokens: 6}}
evaluate: {{text_sequences: 1, chat_prompts: 1, max_new_tokens: 2, decode_tokens: 2}}
"""


def radixfair(*args: str, blocked: str = "") -> subprocess.CompletedProcess:
    """`radixfair ARGS` through its real entry point; ``blocked`` names a module made unimportable."""
    block = f"sys.modules[{blocked!r}] = None; " if blocked else ""
    code = f"import sys; {block}from radixfair.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def scrape(service: ServiceProcess) -> dict[str, float]:
    body = urllib.request.urlopen(service.metrics_url, timeout=10).read().decode()
    samples = {}
    for line in body.splitlines():
        match = re.match(r"^(radixfair_distiller_\S+) (\S+)$", line)
        if match:
            samples[match.group(1)] = float(match.group(2))
    return samples


@pytest.fixture(scope="module")
def distiller(tmp_path_factory):
    port, metrics_port = free_port(), free_port()
    work = tmp_path_factory.mktemp("distiller-work")
    args = ["--set", f"port={port}", "--set", f"metrics_port={metrics_port}", "--set", f"work_dir={work}"]
    args += ["--set", "device=cpu", "--set", "torch_threads=1"]
    log = tmp_path_factory.mktemp("logs") / "distiller.log"
    service = start_service("radixfair_distiller", args, f"127.0.0.1:{port}", log)
    service.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    yield service
    service.stop()


def test_radixfair_distill_runs_the_recipe_in_process(tiny_model_dir, tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(recipe_text(tiny_model_dir, "here-student"))
    capsys.readouterr()
    code = radixfair_main(
        ["distill", str(recipe), "--set", f"work_dir={tmp_path / 'work'}", "--set", "device=cpu"]
    )
    stdout, stderr = capsys.readouterr()
    assert code == 0, stderr[-3000:]
    assert f"] {STEPS}/{STEPS} loss " in stdout
    table = stdout[stdout.index("| model |") :].splitlines()
    assert table[3].startswith("| here-student |")
    assert (tmp_path / "work" / "artifacts" / "here-student" / "manifest.json").exists()


def test_radixfair_distill_without_the_distiller_package_says_what_to_do(tiny_model_dir, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(recipe_text(tiny_model_dir, "nowhere"))
    done = radixfair("distill", str(recipe), blocked="radixfair_distiller")
    assert done.returncode == 2
    assert "needs the radixfair-distiller package" in done.stderr and "--server HOST:PORT" in done.stderr
    missing = radixfair("distill", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and "no recipe file" in missing.stderr


def test_metrics_show_the_running_job_then_jobs_by_state(distiller, tiny_model_dir, tmp_path):
    with grpc.insecure_channel(distiller.address) as channel:
        stub = distiller_pb2_grpc.DistillerServiceStub(channel)
        request = distiller_pb2.SubmitJobRequest(recipe_yaml=recipe_text(tiny_model_dir, "long", 100_000))
        job_id = stub.SubmitJob(request, timeout=60).job_id
        for message in stub.WatchJob(distiller_pb2.WatchJobRequest(job_id=job_id), timeout=300):
            if message.event.stage == "distill" and message.event.step >= 2:
                break
        during = scrape(distiller)
        stub.CancelJob(distiller_pb2.CancelJobRequest(job_id=job_id))
        events = [m.event for m in stub.WatchJob(distiller_pb2.WatchJobRequest(job_id=job_id), timeout=300)]
    cancelled_steps = max(e.step for e in events if e.stage == "distill")

    assert during['radixfair_distiller_stage{radixfair_distiller_stage="distill"}'] == 1
    assert during['radixfair_distiller_jobs{state="running"}'] == 1
    assert during["radixfair_distiller_training_step"] >= 2
    assert during["radixfair_distiller_training_total_steps"] == 100_000
    assert during["radixfair_distiller_training_loss"] > 0
    assert during["radixfair_distiller_training_tokens_per_second"] > 0
    assert during["radixfair_distiller_training_steps_per_second"] > 0

    # Then a whole job through `radixfair distill --server`, in a process that cannot import torch.
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(recipe_text(tiny_model_dir, "remote-student"))
    done = radixfair("distill", "--server", distiller.address, str(recipe), blocked="torch")
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"] {STEPS}/{STEPS} loss " in done.stdout
    assert "| remote-student |" in done.stdout and "perplexity" in done.stdout

    after = scrape(distiller)
    assert after['radixfair_distiller_stage{radixfair_distiller_stage="idle"}'] == 1
    assert after['radixfair_distiller_jobs{state="succeeded"}'] == 1
    assert after['radixfair_distiller_jobs{state="cancelled"}'] == 1
    assert after['radixfair_distiller_jobs{state="running"}'] == 0
    assert after["radixfair_distiller_training_step"] == STEPS
    assert after["radixfair_distiller_training_steps_total"] == cancelled_steps + STEPS
    assert after["radixfair_distiller_training_tokens_total"] == (cancelled_steps + STEPS) * BATCH * SEQ_LEN


def test_a_rejected_recipe_from_radixfair_distill_names_the_problem(distiller, tiny_model_dir, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"name: bad\nteacher: {tiny_model_dir}\nprune: {{depth: {{keep_layers: 7}}}}\n")
    done = radixfair("distill", "--server", distiller.address, str(recipe), blocked="torch")
    assert done.returncode == 2
    assert "INVALID_ARGUMENT" in done.stderr and "keep_layers: 7 layers asked" in done.stderr
