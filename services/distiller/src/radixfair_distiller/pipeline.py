"""One job's stages, in order: data -> prune -> distill -> quantize -> evaluate -> publish.

Every stage writes its output into the job directory atomically and is
skipped when that output is already there, and the distill stage resumes
from its last checkpoint, so a job interrupted at any point (kill -9
included) restarts where it was and no finished work is lost.

Layout of a job directory:
    recipe.yaml, job.json, events.jsonl
    stages/initial/          the pruned (or copied) student before training
    stages/student/          the trained student
    stages/student-int8/ ... quantized copies
    stages/eval-<variant>.json
    checkpoint/              the latest training checkpoint (while training)

Under torchrun, rank 0 runs this pipeline; when it reaches training it
tells the other ranks which job to train (``TrainJob``) and they join it
through ``train_on_follower`` with the data and initial student that rank 0
has written. Only rank 0 writes events, checkpoints and artifacts.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from radixfair.tokenization import PromptEncoder
from radixfair_distiller.artifacts import ArtifactStore, Manifest, describe
from radixfair_distiller.data.batches import calibration_batches
from radixfair_distiller.data.bundle import DataBundle, prepare_data
from radixfair_distiller.data.engine_answers import answer_source
from radixfair_distiller.distributed import DistributedContext
from radixfair_distiller.evaluation import evaluate_model_dir
from radixfair_distiller.model_dir import content_hash, is_model_dir, load_llama, save_llama, staging_dir
from radixfair_distiller.pruning import prune
from radixfair_distiller.quantize import quantize_model_dir
from radixfair_distiller.recipe import ResolvedRecipe
from radixfair_distiller.training import (
    JobCancelledError,
    StepReport,
    TrainingHooks,
    TrainingRun,
    distill,
)

BASE_VARIANT = "none"


class JobInterruptedError(Exception):
    """The distiller is shutting down; the job stays resumable."""


@dataclass(frozen=True)
class StageReporter:
    """How a running job reports progress and learns that it should stop."""

    event: Callable[..., None]  # event(stage=..., message=..., step=..., ...)
    should_stop: Callable[[], bool]
    check: Callable[[], None]  # raises JobCancelledError or JobInterruptedError
    # Every finished training step (metrics); the step's event goes through ``event`` as well.
    training_step: Callable[[StepReport], None] = lambda step: None


@dataclass(frozen=True)
class TrainJob:
    """Rank 0 to the other ranks: train job ``job_id`` with me now."""

    job_id: str


@dataclass(frozen=True)
class JobPaths:
    job_dir: Path
    cache_dir: Path

    @property
    def initial(self) -> Path:
        return self.job_dir / "stages" / "initial"

    @property
    def student(self) -> Path:
        return self.job_dir / "stages" / "student"

    @property
    def checkpoint(self) -> Path:
        return self.job_dir / "checkpoint"

    def variant(self, scheme: str) -> Path:
        return self.student if scheme == BASE_VARIANT else self.job_dir / "stages" / f"student-{scheme}"

    def evaluation(self, scheme: str) -> Path:
        return self.job_dir / "stages" / f"eval-{scheme}.json"

    def details(self) -> Path:
        return self.job_dir / "stages" / "details.json"


def run_pipeline(
    job_id: str,
    resolved: ResolvedRecipe,
    paths: JobPaths,
    artifacts: ArtifactStore,
    device: torch.device,
    report: StageReporter,
    dist: DistributedContext | None = None,
) -> list[str]:
    """Runs (or finishes) the job; returns the names of the artifacts it published.

    Under torchrun this runs on rank 0 only; ``dist`` brings the other ranks into the training.
    """
    recipe = resolved.recipe
    teacher_dir = resolved.teacher_dir
    teacher_hash = _cached_content_hash(teacher_dir, paths.cache_dir)
    teacher = load_llama(teacher_dir, device)
    encoder = PromptEncoder(teacher_dir)

    report.event(stage="data", message="preparing docstring text and the teacher's chat answers")
    source = answer_source(recipe.data.teacher_answers, teacher_dir, str(device))
    bundle = prepare_data(
        recipe.data,
        encoder,
        teacher,
        teacher_hash,
        paths.cache_dir,
        on_progress=lambda done, total: _data_progress(report, done, total),
        answer=source.answer,
        answer_batch=source.batch,
        answer_tag=source.tag,
    )
    report.check()
    _prune_stage(resolved, paths, teacher, bundle, report)
    report.check()
    _distill_stage(job_id, resolved, paths, teacher, bundle, device, report, dist)
    variants = [BASE_VARIANT, *recipe.quantize]
    for scheme in recipe.quantize:
        report.check()
        if not is_model_dir(paths.variant(scheme)):
            report.event(stage="quantize", message=f"{scheme} weights")
            quantize_model_dir(paths.student, paths.variant(scheme), scheme)
    teacher_metrics = _teacher_evaluation(resolved, teacher_hash, teacher, bundle, paths, device, report)
    for scheme in variants:
        report.check()
        if not paths.evaluation(scheme).exists():
            report.event(stage="evaluate", message=f"variant {scheme}")
            evaluation = evaluate_model_dir(
                paths.variant(scheme), teacher, bundle, recipe.evaluate, recipe.data.seq_len, device
            )
            _write_json(paths.evaluation(scheme), evaluation.as_metrics())
    report.check()
    return _publish(job_id, resolved, teacher_hash, teacher_metrics, paths, artifacts, variants, report)


def _data_progress(report: StageReporter, done: int, total: int) -> None:
    report.event(stage="data", step=done, total_steps=total, message="teacher answers")
    report.check()  # answers so far are cached; a cancel or shutdown need not wait for the rest


def artifact_name(recipe_name: str, scheme: str) -> str:
    return recipe_name if scheme == BASE_VARIANT else f"{recipe_name}-{scheme}"


def _prune_stage(resolved, paths: JobPaths, teacher, bundle: DataBundle, report: StageReporter) -> None:
    recipe = resolved.recipe
    if is_model_dir(paths.initial):
        report.event(stage="prune", message="initial student already built; reused")
        return
    if recipe.prune is None:
        report.event(stage="prune", message="no pruning: the student starts as a copy of the teacher")
        _write_json(paths.details(), {})
        save_llama(teacher, paths.initial, resolved.teacher_dir)
        return
    report.event(stage="prune", message="measuring importance on calibration data")
    batches = calibration_batches(bundle, recipe.prune.calibration_sequences, recipe.data.seq_len)
    student, prune_report = prune(teacher, recipe.prune, batches)
    # Details first: the student directory appearing is what marks the stage done.
    _write_json(paths.details(), {"prune": asdict(prune_report)})
    save_llama(student, paths.initial, resolved.teacher_dir)
    report.event(stage="prune", message=f"student shape {prune_report.config}")


def _distill_stage(job_id, resolved, paths: JobPaths, teacher, bundle, device, report, dist) -> None:
    recipe = resolved.recipe
    if is_model_dir(paths.student):
        report.event(stage="distill", message="student already trained; reused")
        return
    if recipe.distill is None:
        report.event(stage="distill", message="no training")
        with staging_dir(paths.student) as staging:
            shutil.copytree(paths.initial, staging, dirs_exist_ok=True)
        return
    spec = recipe.distill
    schedule = spec.schedule(recipe.data.seq_len)
    hooks = TrainingHooks(
        on_step=lambda r: _step_event(report, r),
        on_checkpoint=lambda step: report.event(
            stage="distill", step=step, total_steps=schedule.total_steps, message="checkpoint"
        ),
        on_resume=lambda step: report.event(
            stage="distill",
            step=step,
            total_steps=schedule.total_steps,
            message=f"resumed from checkpoint at step {step}",
        ),
        should_stop=report.should_stop,
    )
    if dist is not None:
        report.event(stage="distill", message=f"training on {dist.world_size} ranks")
        dist.broadcast(TrainJob(job_id))
    student, losses = distill(
        load_llama(paths.initial, device),
        teacher if _needs_teacher(resolved) else None,
        bundle,
        _training_run(resolved, paths, device, dist),
        hooks,
    )
    report.check()  # a stop requested during the last step: keep the checkpoint, do not finish
    details = _read_json(paths.details())
    details["training"] = {
        "steps": schedule.total_steps,
        "tokens": schedule.total_tokens,
        "losses": [round(x, 5) for x in losses],
    }
    _write_json(paths.details(), details)
    save_llama(student, paths.student, resolved.teacher_dir)
    shutil.rmtree(paths.checkpoint, ignore_errors=True)


def train_on_follower(resolved: ResolvedRecipe, paths: JobPaths, dist: DistributedContext) -> None:
    """A rank other than 0 joins the training of a job whose data and initial student rank 0 prepared.

    It reads the data from the cache rank 0 filled and writes nothing; a cancel or a shutdown on
    rank 0 stops it at the same step.
    """
    teacher = load_llama(resolved.teacher_dir, dist.device)
    source = answer_source(resolved.recipe.data.teacher_answers, resolved.teacher_dir, str(dist.device))
    bundle = prepare_data(
        resolved.recipe.data,
        PromptEncoder(resolved.teacher_dir),
        teacher,
        _cached_content_hash(resolved.teacher_dir, paths.cache_dir),
        paths.cache_dir,
        answer=source.answer,
        answer_batch=source.batch,
        answer_tag=source.tag,
    )
    quiet = TrainingHooks(
        on_step=lambda r: None,
        on_checkpoint=lambda s: None,
        on_resume=lambda s: None,
        should_stop=lambda: False,
    )
    try:
        distill(
            load_llama(paths.initial, dist.device),
            teacher if _needs_teacher(resolved) else None,
            bundle,
            _training_run(resolved, paths, dist.device, dist),
            quiet,
        )
    except JobCancelledError:
        pass  # rank 0 stopped the job (cancel or shutdown); it stays resumable there


def _needs_teacher(resolved: ResolvedRecipe) -> bool:
    spec = resolved.recipe.distill
    return spec is not None and spec.loss.hard_label_weight < 1.0


def _training_run(resolved: ResolvedRecipe, paths: JobPaths, device, dist) -> TrainingRun:
    recipe = resolved.recipe
    assert recipe.distill is not None
    return TrainingRun(
        recipe.distill, recipe.seed, recipe.data.seq_len, paths.checkpoint, resolved.teacher_dir, device, dist
    )


def _step_event(report: StageReporter, step: StepReport) -> None:
    report.training_step(step)
    report.event(
        stage="distill",
        step=step.step,
        total_steps=step.total_steps,
        loss=step.loss,
        eta_seconds=step.eta_seconds,
        message="on-policy" if step.on_policy else "",
    )


def _teacher_evaluation(resolved, teacher_hash, teacher, bundle, paths: JobPaths, device, report) -> dict:
    """The teacher's own figures on the same held-out data, cached per teacher and evaluation settings."""
    recipe = resolved.recipe
    key = json.dumps([asdict(recipe.evaluate), asdict(recipe.data)], sort_keys=True)
    cache = (
        paths.cache_dir
        / f"teacher-eval-{teacher_hash[:16]}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"
    )
    if cache.exists():
        return _read_json(cache)
    report.event(stage="evaluate", message="teacher baseline")
    evaluation = evaluate_model_dir(
        resolved.teacher_dir, teacher, bundle, recipe.evaluate, recipe.data.seq_len, device
    )
    _write_json(cache, evaluation.as_metrics())
    return evaluation.as_metrics()


def _publish(job_id, resolved, teacher_hash, teacher_metrics, paths: JobPaths, artifacts, variants, report):
    recipe = resolved.recipe
    details = _read_json(paths.details())
    names = []
    base_name = artifact_name(recipe.name, BASE_VARIANT)
    base_hash = content_hash(paths.student)
    for scheme in variants:
        name = artifact_name(recipe.name, scheme)
        existing = artifacts.get(name)
        if existing is not None and existing.manifest.job_id == job_id:
            names.append(name)
            continue
        report.event(stage="publish", message=name)
        source = paths.variant(scheme)
        facts = describe(source)
        manifest = Manifest(
            name=name,
            job_id=job_id,
            parent=recipe.teacher if scheme == BASE_VARIANT else base_name,
            parent_content_hash=teacher_hash if scheme == BASE_VARIANT else base_hash,
            teacher=recipe.teacher,
            teacher_content_hash=teacher_hash,
            quantization=scheme,
            recipe_yaml=resolved.text,
            content_hash=str(facts["content_hash"]),
            parameters=int(facts["parameters"]),
            size_bytes=int(facts["size_bytes"]),
            created=time.time(),
            evaluation=_read_json(paths.evaluation(scheme)),
            teacher_evaluation=teacher_metrics,
            details=details,
        )
        artifacts.publish(source, manifest)
        names.append(name)
    return names


def _cached_content_hash(model_dir: Path, cache_dir: Path) -> str:
    """Hashing a 500 MB checkpoint takes seconds; remember it per (path, size, mtime)."""
    weights = model_dir / "model.safetensors"
    stat = weights.stat()
    config_mtime = (model_dir / "config.json").stat().st_mtime_ns
    key = f"{model_dir.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{config_mtime}"
    cache = cache_dir / "content-hashes" / hashlib.sha256(key.encode()).hexdigest()[:24]
    if cache.exists():
        return cache.read_text().strip()
    digest = content_hash(model_dir)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(digest)
    return digest


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_suffix(".tmp")
    staging.write_text(json.dumps(data, indent=2, sort_keys=True))
    staging.replace(path)


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}
