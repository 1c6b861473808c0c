"""Builds the configured local scheduling policy by name."""

from __future__ import annotations

from collections.abc import Callable

from radixfair_worker.config import SchedulerConfig
from radixfair_worker.scheduler.base import SchedulingPolicy
from radixfair_worker.scheduler.dlpm import DLPMPolicy
from radixfair_worker.scheduler.fcfs import FCFSPolicy
from radixfair_worker.scheduler.lpm import LPMPolicy
from radixfair_worker.scheduler.lpm_aging import LPMAgingPolicy
from radixfair_worker.scheduler.service_meter import validate_scheduler_config
from radixfair_worker.scheduler.vtc import VTCPolicy

POLICIES: dict[str, Callable[[SchedulerConfig], SchedulingPolicy]] = {
    "fcfs": FCFSPolicy,
    "lpm": LPMPolicy,
    "lpm_aging": LPMAgingPolicy,
    "vtc": VTCPolicy,
    "dlpm": DLPMPolicy,
}


def build_policy(config: SchedulerConfig) -> SchedulingPolicy:
    """A fresh policy for ``config.policy``; ValueError for an unknown name or bad parameters."""
    factory = POLICIES.get(config.policy)
    if factory is None:
        raise ValueError(f"unknown scheduling policy {config.policy!r}; choose one of {', '.join(POLICIES)}")
    validate_scheduler_config(config)
    return factory(config)
