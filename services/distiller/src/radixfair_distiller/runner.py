"""Runs jobs one at a time on a background thread, in submission order, and resumes them after a restart.

The gRPC server and the CLI both drive this class; it holds no gRPC types.
Jobs run one at a time because each one already uses every core (or the
GPU) it is given; a second job in parallel would only slow both down.
"""

from __future__ import annotations

import logging
import queue
import shutil
import threading
from dataclasses import dataclass

import torch

from radixfair.errors import NotFoundError
from radixfair_distiller.artifacts import ArtifactStore
from radixfair_distiller.config import DistillerConfig, resolve_device
from radixfair_distiller.distiller_metrics import DistillerMetrics
from radixfair_distiller.distributed import DistributedContext
from radixfair_distiller.events import EventLog, JobState
from radixfair_distiller.job_store import JobRecord, JobStore
from radixfair_distiller.pipeline import (
    BASE_VARIANT,
    JobInterruptedError,
    JobPaths,
    StageReporter,
    artifact_name,
    run_pipeline,
)
from radixfair_distiller.recipe import RecipeError, resolve_recipe
from radixfair_distiller.training import JobCancelledError

log = logging.getLogger(__name__)

_STOP = object()


@dataclass
class _Control:
    """Flags of one job, set from other threads."""

    cancel: threading.Event
    log: EventLog


class JobRunner:
    """The job queue of one distiller; under torchrun it runs on rank 0 and trains on every rank."""

    def __init__(
        self,
        config: DistillerConfig,
        metrics: DistillerMetrics | None = None,
        dist: DistributedContext | None = None,
    ) -> None:
        self.config = config
        self.store = JobStore(config.jobs_dir)
        self.artifacts = ArtifactStore(config.artifacts_dir)
        self.device: torch.device = dist.device if dist is not None else resolve_device(config.device)
        self._dist = dist
        self._metrics = metrics
        if metrics is not None:
            metrics.watch_jobs(self.store)
        self._queue: queue.Queue = queue.Queue()
        self._controls: dict[str, _Control] = {}
        # Guards _controls and every state transition (queued -> running/cancelled).
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- lifecycle -------------------------------------------------------

    def start(self) -> None:
        """Re-queues every job a previous process left queued or running, then starts the worker thread."""
        for record in self.store.all():
            if not record.state.is_terminal:
                self._control(record.job_id)
                self._queue.put(record.job_id)
        self._thread = threading.Thread(target=self._run_forever, name="distiller-jobs", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Interrupts the running job at its next step (it stays resumable) and ends the thread."""
        self._stopping.set()
        self._queue.put(_STOP)
        if self._thread is not None:
            self._thread.join(timeout)

    # ---- requests ------------------------------------------------------------

    def submit(self, recipe_text: str) -> JobRecord:
        resolved = resolve_recipe(recipe_text, self.config.model_cache_dir)
        name = resolved.recipe.name
        with self._lock:
            taken = [
                artifact_name(name, s)
                for s in (BASE_VARIANT, *resolved.recipe.quantize)
                if self.artifacts.exists(artifact_name(name, s))
            ]
            if taken:
                raise RecipeError(f"recipe.name: artifact {taken[0]!r} already exists; choose another name")
            active = [r.job_id for r in self.store.all() if r.name == name and not r.state.is_terminal]
            if active:
                raise RecipeError(f"recipe.name: job {active[0]} is already making {name!r}")
            record = self.store.create(name, recipe_text)
            control = self._control(record.job_id)
        control.log.append(JobState.QUEUED, message=f"queued {name}")
        self._queue.put(record.job_id)
        return record

    def cancel(self, job_id: str) -> JobState:
        with self._lock:
            record = self._record(job_id)
            if record.state.is_terminal:
                return record.state
            self._control(job_id).cancel.set()
            if record.state == JobState.QUEUED:
                # Not started: end it here; the worker thread skips it when it comes up.
                self._finish(record, JobState.CANCELLED, "cancelled before it started")
        return JobState.CANCELLED

    def events(self, job_id: str) -> EventLog:
        self._record(job_id)
        return self._control(job_id).log

    def get(self, job_id: str) -> JobRecord:
        return self._record(job_id)

    # ---- the worker thread ---------------------------------------------------

    def _run_forever(self) -> None:
        while True:
            job_id = self._queue.get()
            if job_id is _STOP or self._stopping.is_set():
                return
            with self._lock:
                record = self.store.load(job_id)
                if record is None or record.state.is_terminal:
                    continue
                resumed = record.state == JobState.RUNNING
                record = self.store.update(record, state=JobState.RUNNING)
                control = self._control(record.job_id)
                control.log.append(
                    JobState.RUNNING, message="resumed after a restart" if resumed else "started"
                )
            try:
                self._run(record, control)
            finally:
                if self._metrics is not None:
                    self._metrics.job_ended()

    def _run(self, record: JobRecord, control: _Control) -> None:
        metrics = self._metrics
        if metrics is not None:
            metrics.job_started()
        reporter = StageReporter(
            event=lambda **fields: self._event(control, **fields),
            should_stop=lambda: control.cancel.is_set() or self._stopping.is_set(),
            check=lambda: self._check(control),
            training_step=metrics.training_step if metrics is not None else lambda step: None,
        )
        paths = JobPaths(self.store.job_dir(record.job_id), self.config.cache_dir)
        try:
            resolved = resolve_recipe(self.store.recipe_text(record.job_id), self.config.model_cache_dir)
            names = run_pipeline(
                record.job_id, resolved, paths, self.artifacts, self.device, reporter, self._dist
            )
        except JobInterruptedError:
            control.log.append(JobState.RUNNING, message="interrupted by shutdown; resumes on restart")
            return
        except JobCancelledError as error:
            if self._stopping.is_set() and not control.cancel.is_set():
                control.log.append(JobState.RUNNING, message="interrupted by shutdown; resumes on restart")
                return
            self._finish(record, JobState.CANCELLED, str(error))
            return
        except Exception as error:  # noqa: BLE001 (a failed job must not take the service down)
            log.exception("job %s failed", record.job_id)
            self._finish(record, JobState.FAILED, f"{type(error).__name__}: {error}")
            return
        shutil.rmtree(paths.job_dir / "stages", ignore_errors=True)  # the artifacts hold it all now
        with self._lock:
            self.store.update(record, state=JobState.SUCCEEDED)
            control.log.append(JobState.SUCCEEDED, message="done", artifacts=tuple(names))

    def _event(self, control: _Control, **fields: object) -> None:
        control.log.append(JobState.RUNNING, **fields)
        if self._metrics is not None and fields.get("stage"):
            self._metrics.stage_changed(str(fields["stage"]))

    def _check(self, control: _Control) -> None:
        if control.cancel.is_set():
            raise JobCancelledError("cancelled")
        if self._stopping.is_set():
            raise JobInterruptedError()

    def _finish(self, record: JobRecord, state: JobState, message: str) -> None:
        with self._lock:
            current = self.store.load(record.job_id)
            if current is not None and current.state.is_terminal:
                return  # ended already (a cancel raced the job's own end)
            self.store.update(record, state=state, error=message if state == JobState.FAILED else "")
            self._control(record.job_id).log.append(state, message=message)

    def _record(self, job_id: str) -> JobRecord:
        try:
            record = self.store.load(job_id)
        except ValueError:
            record = None
        if record is None:
            raise NotFoundError(f"no job {job_id!r}")
        return record

    def _control(self, job_id: str) -> _Control:
        with self._lock:
            control = self._controls.get(job_id)
            if control is None:
                control = _Control(threading.Event(), self.store.events(job_id))
                self._controls[job_id] = control
            return control
