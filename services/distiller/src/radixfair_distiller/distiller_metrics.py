"""Prometheus metrics of one distiller (the service, or a CLI job), on its own registry.

Jobs by state are read from the job store at scrape time, so they count the
jobs a previous process left behind too. The training gauges describe the
running job (the last one after it ends); the counters add up over all jobs,
so ``rate(radixfair_distiller_training_tokens_total[1m])`` is tokens/s.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Enum, Gauge
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from radixfair_distiller.events import JobState

# Annotations only: training brings torch, which the service imports after binding its ports.
if TYPE_CHECKING:
    from radixfair_distiller.job_store import JobStore
    from radixfair_distiller.training import StepReport

IDLE = "idle"
# The pipeline's stages, in order (pipeline.py), and idle when no job runs.
STAGES = (IDLE, "data", "prune", "distill", "quantize", "evaluate", "publish")


class DistillerMetrics:
    """The distiller's metrics; the runner calls the methods, Prometheus scrapes ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.stage = Enum(
            "radixfair_distiller_stage", "Stage of the running job", states=list(STAGES), registry=registry
        )
        self.step = Gauge(
            "radixfair_distiller_training_step", "Optimizer steps done by the running job", registry=registry
        )
        self.total_steps = Gauge(
            "radixfair_distiller_training_total_steps", "Steps the running job trains for", registry=registry
        )
        self.loss = Gauge(
            "radixfair_distiller_training_loss", "Loss of the last training step", registry=registry
        )
        self.tokens_per_second = Gauge(
            "radixfair_distiller_training_tokens_per_second",
            "Token positions per second of the last training step (all ranks)",
            registry=registry,
        )
        self.steps_per_second = Gauge(
            "radixfair_distiller_training_steps_per_second",
            "Optimizer steps per second of the last training step",
            registry=registry,
        )
        self.steps = Counter("radixfair_distiller_training_steps", "Optimizer steps done", registry=registry)
        self.tokens = Counter(
            "radixfair_distiller_training_tokens", "Token positions trained on (all ranks)", registry=registry
        )

    def watch_jobs(self, store: JobStore) -> None:
        self.registry.register(_JobsByState(store))

    def job_started(self) -> None:
        for gauge in (self.step, self.total_steps, self.loss, self.tokens_per_second, self.steps_per_second):
            gauge.set(0)

    def stage_changed(self, stage: str) -> None:
        if stage in STAGES:
            self.stage.state(stage)

    def training_step(self, report: StepReport) -> None:
        self.stage.state("distill")
        self.step.set(report.step)
        self.total_steps.set(report.total_steps)
        self.loss.set(report.loss)
        self.steps.inc()
        self.tokens.inc(report.tokens)
        if report.seconds > 0:
            self.tokens_per_second.set(report.tokens / report.seconds)
            self.steps_per_second.set(1.0 / report.seconds)

    def job_ended(self) -> None:
        self.stage.state(IDLE)


class _JobsByState(Collector):
    """radixfair_distiller_jobs{state}: every job in the store by state, read at scrape time."""

    def __init__(self, store: JobStore) -> None:
        self._store = store

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield self._family()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = self._family()
        counts = Tally(record.state for record in self._store.all())
        for state in JobState:
            family.add_metric([state.value], counts[state])
        yield family

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily("radixfair_distiller_jobs", "Jobs by state", labels=["state"])
