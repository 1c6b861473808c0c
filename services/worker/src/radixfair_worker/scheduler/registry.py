"""Builds the configured local scheduling policy by name."""

from __future__ import annotations

import time
from collections.abc import Callable

from radixfair.config_loading import unknown_choice
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


def build_policy(config: SchedulerConfig, clock: Callable[[], float] = time.monotonic) -> SchedulingPolicy:
    """A fresh policy for ``config.policy``; ValueError for an unknown name or bad parameters.

    ``clock`` is the one request arrival times come from (a simulator passes its virtual clock);
    only policies that weigh waiting time read it.
    """
    factory = POLICIES.get(config.policy)
    if factory is None:
        raise ValueError(unknown_choice("scheduling policy", config.policy, POLICIES))
    validate_scheduler_config(config)
    if factory is LPMAgingPolicy:
        return LPMAgingPolicy(config, clock=clock)
    return factory(config)
