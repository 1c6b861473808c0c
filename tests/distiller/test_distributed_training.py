"""Training under torchrun: 2 CPU processes on gloo train the student a single process trains.

Every torchrun job goes through the real CLI entry: `python -m torch.distributed.run
--nproc_per_node 2 -m radixfair_distiller.cli distill RECIPE` (what torchrun
does). The one-process reference runs the same job through the JobRunner the
CLI drives, in this process (a third process importing torch would cost more
than its training). Each launch runs in its own process group with a deadline,
and the ranks' collectives time out after a minute, so a hung rank fails the
test instead of hanging it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from radixfair_distiller.config import DistillerConfig
from radixfair_distiller.runner import JobRunner

DEADLINE_S = 300
# 4 steps with a checkpoint every 2: the resumed job restarts at step 2, and with seed 7 and fraction 0.4
# step 3 is on-policy, so both runs train through a sampled batch.
STEPS = 4


def recipe_text(teacher: Path) -> str:
    # batch 4 over 2 ranks: 2 rows each; on-policy steps and the JSD + hard-label mix both run.
    # float64: see assert_same_weights for why an fp32 comparison cannot be tight. seq_len 48: the chat
    # prompts are 35 to 44 tokens, so a chat row still learns answer tokens, and an on-policy row its
    # 4 sampled ones; a float64 step over the 49,152-word LM head costs in proportion to its positions.
    return f"""
name: ddp-student
teacher: {teacher}
seed: 7
prune: {{depth: {{keep_layers: 1}}, calibration_sequences: 2}}
distill:
  steps: {STEPS}
  precision: float64
  batch_size: 4
  learning_rate: 0.002
  warmup_steps: 1
  checkpoint_every: 2
  loss: {{kind: jsd, beta: 0.3, hard_label_weight: 0.2}}
  on_policy: {{fraction: 0.4, max_new_tokens: 4}}
data: {{seq_len: 48, text_max_files: 10, chat_prompts: 30, response_max_new_tokens: 6}}
evaluate: {{text_sequences: 1, chat_prompts: 1, max_new_tokens: 2, decode_tokens: 2}}
"""


def settings(work_dir: Path) -> dict[str, object]:
    return {
        "work_dir": work_dir,
        "device": "cpu",
        "torch_threads": 1,
        "distributed_step_timeout_s": 60,
        "distributed_wait_timeout_s": 120,
    }


def cli_args(work_dir: Path, recipe: Path) -> list[str]:
    flags = [arg for key, value in settings(work_dir).items() for arg in ("--set", f"{key}={value}")]
    return ["-m", "radixfair_distiller.cli", *flags, "distill", str(recipe)]


def launch(args: list[str]) -> subprocess.Popen:
    # A session of its own: on the deadline the launcher and every rank it started are killed together.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )


def finish(process: subprocess.Popen) -> str:
    try:
        output, _ = process.communicate(timeout=DEADLINE_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"run did not finish in {DEADLINE_S}s:\n{output[-4000:]}")
    assert process.returncode == 0, output[-4000:]
    return output


def torchrun(work_dir: Path, recipe: Path) -> subprocess.Popen:
    return launch(
        ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *cli_args(work_dir, recipe)]
    )


def student_weights(work_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(work_dir / "artifacts" / "ddp-student" / "model.safetensors"))


def job_events(work_dir: Path) -> list[dict]:
    (job_dir,) = (work_dir / "jobs").iterdir()
    return [json.loads(line) for line in (job_dir / "events.jsonl").read_text().splitlines()]


# Where the tolerance comes from. Two ranks sum each gradient in another order than one process, so
# a gradient element differs by up to its summation's rounding, dg <= n * u * sum|terms|. AdamW then
# normalises: the first step moves an element by lr * g / (|g| + eps), whose slope at g = 0 is 1 / eps.
# An element whose gradient is itself at the rounding level (a rare token's embedding row, fed only
# through the tied LM head) can therefore move by anything up to +-lr in either run: in fp32 that is
# 1.5e-5 apart for 3 of 3.1M elements, with identical losses, and no elementwise fp32 tolerance both
# holds and still catches a wrong update. In fp64 (u = 1.1e-16) the same worst case is
# lr * n * u * sum|terms| / eps ~ 2e-3 * 1e3 * 1.1e-16 * 1 / 1e-8 = 2e-8 per step, 8e-8 over 4 steps,
# so FP64_NOISE leaves 12x headroom. The published weights are fp32: each run rounds to its nearest
# fp32 value, so they may also differ by one fp32 ulp, at most 2**-23 * |w|. A real fault (a rank on
# the wrong rows, a gradient not averaged, a step skipped) moves weights by ~lr = 2e-3.
FP64_NOISE = 1e-6
FP32_ULP = 2.0**-23


def assert_same_weights(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert got.keys() == want.keys()
    for name, tensor in want.items():
        torch.testing.assert_close(got[name], tensor, rtol=FP32_ULP, atol=FP64_NOISE, msg=name)


@pytest.fixture(scope="module")
def recipe(tiny_model_dir, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("recipe") / "ddp.yaml"
    path.write_text(recipe_text(tiny_model_dir))
    return path


@pytest.fixture(scope="module")
def runs(recipe, tmp_path_factory) -> dict[str, Path]:
    """The same recipe run by one process (this one) and by torchrun with 2 processes, side by side."""
    single, double = tmp_path_factory.mktemp("single"), tmp_path_factory.mktemp("torchrun")
    process = torchrun(double, recipe)
    try:
        run_here(single, recipe.read_text())
    finally:
        output = finish(process)
    (double / "output.txt").write_text(output)
    return {"single": single, "torchrun": double}


def test_two_gloo_ranks_train_the_weights_one_process_trains(runs):
    assert_same_weights(student_weights(runs["torchrun"]), student_weights(runs["single"]))
    losses = {
        name: json.loads((work / "artifacts" / "ddp-student" / "manifest.json").read_text())["details"][
            "training"
        ]["losses"]
        for name, work in runs.items()
    }
    assert losses["torchrun"] == pytest.approx(losses["single"], rel=1e-4, abs=1e-5)


def test_only_rank_0_writes_the_job_events_and_the_artifact(runs):
    work_dir = runs["torchrun"]
    assert sorted(p.name for p in (work_dir / "artifacts").iterdir()) == ["ddp-student"]
    assert (work_dir / "artifacts" / "ddp-student" / "manifest.json").exists()
    events = job_events(work_dir)
    assert [e["sequence"] for e in events] == list(range(len(events)))
    assert "training on 2 ranks" in [e["message"] for e in events]
    training = [e for e in events if e["total_steps"] and e["message"] in ("", "on-policy")]
    assert [e["step"] for e in training] == list(range(1, STEPS + 1))
    assert "on-policy" in [e["message"] for e in training] and all(e["loss"] > 0 for e in training)
    assert events[-1]["state"] == "succeeded"
    output = (work_dir / "output.txt").read_text()
    # One progress bar and one evaluation table: rank 1 printed none.
    assert output.count("| model |") == 1 and output.count(f"] {STEPS}/{STEPS} loss ") == 1


def test_a_torchrun_job_resumes_every_rank_from_the_single_process_checkpoint(
    runs, recipe, tiny_model_dir, tmp_path
):
    work_dir = tmp_path / "work"
    # The one-process run's data cache (tokenized text, the teacher's answers): the same recipe's data.
    shutil.copytree(runs["single"] / "cache", work_dir / "cache")
    interrupt_after_first_checkpoint(work_dir, recipe.read_text())
    output = finish(torchrun(work_dir, recipe))
    assert "resuming job" in output
    events = job_events(work_dir)
    resumed = [e["step"] for e in events if e["message"].startswith("resumed from checkpoint")]
    assert len(resumed) == 1 and 2 <= resumed[0] < STEPS
    assert_same_weights(student_weights(work_dir), student_weights(runs["single"]))


def run_in_process(work_dir: Path, text: str, until: Callable[[list], bool]) -> JobRunner:
    """Runs the job on a JobRunner in this process until ``until(events)``, then stops the runner."""
    config = DistillerConfig(**{k: v for k, v in settings(work_dir).items() if k != "torch_threads"})
    runner = JobRunner(config)
    runner.start()
    try:
        job_id = runner.submit(text).job_id
        log = runner.events(job_id)
        deadline = time.monotonic() + DEADLINE_S
        while not until(log.since(0)):
            assert time.monotonic() < deadline, f"job did not get there in {DEADLINE_S}s: {log.last}"
            time.sleep(0.05)
    finally:
        runner.stop(timeout=120)
    return runner


def run_here(work_dir: Path, text: str) -> None:
    """Runs the job to its end in this process; it must succeed."""

    def ended(events: list) -> bool:
        return bool(events) and events[-1].state.is_terminal

    runner = run_in_process(work_dir, text, ended)
    (record,) = runner.store.all()
    assert record.state.value == "succeeded", runner.events(record.job_id).last


def interrupt_after_first_checkpoint(work_dir: Path, text: str) -> None:
    """Runs the job in this process and shuts the runner down at its first checkpoint (resumable)."""

    def checkpointed(events: list) -> bool:
        assert not events or not events[-1].state.is_terminal, events[-1]
        return any(e.message == "checkpoint" for e in events)

    runner = run_in_process(work_dir, text, checkpointed)
    (record,) = runner.store.all()
    assert not record.state.is_terminal
