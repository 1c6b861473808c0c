"""The distillation loop: offline (teacher-written data) and on-policy (student-written, teacher-scored).

Each step's batch, its on-policy choice and its sampling are pure functions
of (seed, step), and the learning rate is a pure function of step, so a job
resumed from a checkpoint at step k continues exactly as an uninterrupted
one would (bitwise, on the same machine and thread count).

Under torchrun (``run.dist``) every rank draws the same global batch, trains
on its own slice of it inside DistributedDataParallel, and weights its slice's
mean loss so that the averaged gradient is the whole batch's: the result is
the single-process run's, up to floating-point summation order.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from transformers import LlamaForCausalLM

from radixfair_distiller.checkpoint import Progress, has_checkpoint, load_checkpoint, save_checkpoint
from radixfair_distiller.data.batches import TokenBatch, chat_row, step_rng, training_batch
from radixfair_distiller.data.bundle import DataBundle
from radixfair_distiller.data.splits import TRAIN
from radixfair_distiller.distributed import DistributedContext
from radixfair_distiller.generation import generate
from radixfair_distiller.losses import DistillLossConfig, fused_linear_distill_loss
from radixfair_distiller.recipe import DistillSpec, StepSchedule


class JobCancelledError(Exception):
    """Raised between steps when the job's cancel flag is set."""


@dataclass(frozen=True)
class StepReport:
    step: int  # steps done
    total_steps: int
    loss: float
    eta_seconds: float
    on_policy: bool
    tokens: int = 0  # token positions in the step's global batch
    seconds: float = 0.0  # wall time of the step


@dataclass(frozen=True)
class TrainingHooks:
    on_step: Callable[[StepReport], None]
    on_checkpoint: Callable[[int], None]
    on_resume: Callable[[int], None]
    should_stop: Callable[[], bool]


@dataclass(frozen=True)
class TrainingRun:
    """Where the run keeps its state and what it trains on."""

    spec: DistillSpec
    seed: int
    seq_len: int
    checkpoint_dir: Path
    tokenizer_source: Path
    device: torch.device
    # Set when the job runs under torchrun; rank 0 alone writes checkpoints.
    dist: DistributedContext | None = None


def distill(
    student: LlamaForCausalLM,
    teacher: LlamaForCausalLM | None,
    bundle: DataBundle,
    run: TrainingRun,
    hooks: TrainingHooks,
) -> tuple[LlamaForCausalLM, list[float]]:
    """Trains ``student`` (or the checkpointed one, when there is a checkpoint); returns it and the losses."""
    spec = run.spec
    dist = run.dist
    if dist is not None and spec.batch_size % dist.world_size:
        raise ValueError(
            f"distill.batch_size {spec.batch_size} is not a multiple of the {dist.world_size} ranks"
        )
    if dist is not None and run.device.type == "cuda":
        torch.cuda.set_device(run.device)  # the current device is per thread; this may be a new one
    progress = Progress(step=0, losses=[])
    schedule = spec.schedule(run.seq_len)
    dtype = getattr(torch, spec.compute_dtype)
    # Under bf16 mixed precision the teacher only scores, so it runs in bf16 outright.
    teacher_dtype = getattr(torch, spec.precision)
    if teacher is not None and teacher.dtype != teacher_dtype:
        # A copy: the caller's teacher keeps its dtype for evaluation after training.
        teacher = copy.deepcopy(teacher).to(teacher_dtype)
    if has_checkpoint(run.checkpoint_dir):
        student, optimizer_state, progress = load_checkpoint(run.checkpoint_dir, run.device, dtype)
        optimizer = _optimizer(student, spec)
        optimizer.load_state_dict(optimizer_state)
        hooks.on_resume(progress.step)
    else:
        student = student.to(run.device, dtype)
        optimizer = _optimizer(student, spec)
    if dist is not None:
        starts = dist.gather(progress.step)
        if len(set(starts)) != 1:
            raise RuntimeError(f"ranks would resume from different steps {starts}: is work_dir shared?")
    model = _training_module(student, run)
    loss_config = _loss_config(spec)
    losses = list(progress.losses)
    student.train()
    started, first_step = time.monotonic(), progress.step
    for step in range(progress.step, schedule.total_steps):
        stop = hooks.should_stop()
        if dist is not None:
            stop = dist.any(stop)  # every rank stops before the same step, or none does
        if stop:
            raise JobCancelledError(f"cancelled at step {step}")
        step_started = time.monotonic()
        on_policy = step_rng(run.seed, step, "policy").random() < spec.on_policy.fraction
        if on_policy:
            # Every rank samples the whole batch (a function of seed and step) and keeps its slice,
            # so the samples do not depend on the number of ranks.
            batch = on_policy_batch(student, bundle, run, step)
        else:
            batch = training_batch(
                bundle, run.seq_len, spec.batch_size, spec.chat_fraction, run.seed, step, spec.code_fraction
            )
        # On-policy labels are the student's own samples: learning them as hard labels would
        # reinforce its mistakes, so those steps are pure distillation.
        config = loss_config if not on_policy else _without_hard_labels(loss_config)
        loss = train_step(
            model, teacher, optimizer, batch.to(run.device), config, spec, step, dist, run.seq_len
        )
        losses.append(loss)
        done = step + 1
        now = time.monotonic()
        eta = (now - started) / (done - first_step) * (schedule.total_steps - done)
        tokens = batch.input_ids.numel()
        hooks.on_step(
            StepReport(done, schedule.total_steps, loss, eta, on_policy, tokens, now - step_started)
        )
        if done % schedule.checkpoint_every == 0 and done < schedule.total_steps:
            if dist is None or dist.is_main:
                save_checkpoint(
                    run.checkpoint_dir, student, optimizer, Progress(done, losses), run.tokenizer_source
                )
            hooks.on_checkpoint(done)
    student.eval()
    return student, losses


class StudentLoss(torch.nn.Module):
    """The student's forward pass and the fused LM-head loss as one module.

    DistributedDataParallel synchronises the gradients of what runs inside
    its forward, and the loss uses the LM head outside the student's own
    forward, so both live here. Inputs: input_ids and labels [B, S] int64,
    teacher hidden [B*S, Dt] and head [V, Dt] (or None); returns a scalar.
    """

    def __init__(self, student: LlamaForCausalLM) -> None:
        super().__init__()
        self.student = student

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor,
        teacher_hidden: torch.Tensor | None,
        teacher_head: torch.Tensor | None,
        config: DistillLossConfig,
    ) -> torch.Tensor:
        hidden = self.student.model(input_ids=input_ids, use_cache=False).last_hidden_state
        hidden = hidden.reshape(-1, hidden.shape[-1])
        return fused_linear_distill_loss(
            hidden, self.student.lm_head.weight, teacher_hidden, teacher_head, labels.reshape(-1), config
        )


def _training_module(student: LlamaForCausalLM, run: TrainingRun) -> torch.nn.Module:
    module = StudentLoss(student)
    if run.dist is None:
        return module
    # Construction broadcasts rank 0's weights, so the ranks start equal even if their loads differed.
    return DistributedDataParallel(
        module, device_ids=[run.device.index] if run.device.type == "cuda" else None
    )


def train_step(
    model: torch.nn.Module,
    teacher: LlamaForCausalLM | None,
    optimizer: torch.optim.Optimizer,
    batch: TokenBatch,
    loss_config: DistillLossConfig,
    spec: DistillSpec,
    step: int,
    dist: DistributedContext | None = None,
    seq_len: int | None = None,
) -> float:
    """One optimizer step on the global ``batch`` (this rank's slice of it under torchrun); its mean loss."""
    schedule = spec.schedule(seq_len if seq_len is not None else batch.input_ids.shape[1])
    for group in optimizer.param_groups:
        group["lr"] = learning_rate(schedule, step)
    weight = 1.0
    if dist is not None:
        shard = dist.shard(batch)
        # The loss is a mean over this slice's learned tokens and DDP averages over ranks; weighting
        # by ranks x slice tokens / batch tokens makes the averaged gradient the whole batch's mean.
        counted = int((shard.labels != loss_config.ignore_index).sum())
        total = int((batch.labels != loss_config.ignore_index).sum())
        weight = dist.world_size * counted / total if total else 0.0
        batch = shard
    teacher_hidden = teacher_head = None
    if loss_config.uses_teacher:
        assert teacher is not None
        with torch.no_grad():
            teacher_hidden = teacher.model(input_ids=batch.input_ids, use_cache=False).last_hidden_state
            teacher_hidden = teacher_hidden.reshape(-1, teacher_hidden.shape[-1])
            teacher_head = teacher.lm_head.weight
    with _autocast(spec, batch.input_ids.device):
        loss = model(batch.input_ids, batch.labels, teacher_hidden, teacher_head, loss_config) * weight
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if spec.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), spec.grad_clip)
    optimizer.step()
    loss = loss.detach()
    if dist is not None:
        loss = dist.sum(loss) / dist.world_size
    return float(loss)


def on_policy_batch(student: LlamaForCausalLM, bundle: DataBundle, run: TrainingRun, step: int) -> TokenBatch:
    """Training prompts answered by the student itself (sampled); the teacher scores them in the loss."""
    spec = run.spec
    rng = step_rng(run.seed, step, "on-policy")
    prompts = [list(rng.choice(bundle.chat[TRAIN]).prompt_ids) for _ in range(spec.batch_size)]
    generator = torch.Generator().manual_seed(_seed_int(run.seed, step))
    answers = generate(
        student,
        prompts,
        spec.on_policy.max_new_tokens,
        bundle.eos_token_id,
        bundle.pad_token_id,
        temperature=spec.on_policy.temperature,
        generator=generator,
        batch_size=spec.batch_size,
    )
    rows = [
        chat_row((tuple(p), tuple(a)), run.seq_len, bundle.pad_token_id) for p, a in zip(prompts, answers)
    ]
    return TokenBatch(torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows]))


def learning_rate(schedule: StepSchedule, step: int) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak at the last step."""
    peak = schedule.peak_learning_rate
    if step < schedule.warmup_steps:
        return peak * (step + 1) / schedule.warmup_steps
    span = max(schedule.total_steps - schedule.warmup_steps, 1)
    progress = (step - schedule.warmup_steps) / span
    return peak * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def _autocast(spec: DistillSpec, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast for the student's forward and loss under bfloat16 precision; nothing otherwise."""
    if spec.precision != "bfloat16":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def _optimizer(student: LlamaForCausalLM, spec: DistillSpec) -> torch.optim.Optimizer:
    # fused: one kernel over all parameters; on a CPU it is ~8x faster than the per-tensor loop.
    return torch.optim.AdamW(
        student.parameters(), lr=spec.learning_rate, weight_decay=spec.weight_decay, fused=True
    )


def _loss_config(spec: DistillSpec) -> DistillLossConfig:
    loss = spec.loss
    return DistillLossConfig(
        kind=loss.kind,
        beta=loss.beta,
        temperature=loss.temperature,
        hard_label_weight=loss.hard_label_weight,
        chunk_tokens=loss.chunk_tokens,
    )


def _without_hard_labels(config: DistillLossConfig) -> DistillLossConfig:
    return DistillLossConfig(config.kind, config.beta, config.temperature, 0.0, config.chunk_tokens)


def _seed_int(seed: int, step: int) -> int:
    return int.from_bytes(hashlib.sha256(f"sample:{seed}:{step}".encode()).digest()[:8], "big") >> 1
