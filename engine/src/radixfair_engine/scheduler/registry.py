"""The registry of local scheduling policies: every name a worker accepts, and the class it builds.

Everything that lists local policies reads ``POLICIES`` (or ``names()``): ``build_policy`` here,
the evaluation scripts (bench/eval/eval_runs.py), and ``tests/bench/test_policy_names.py``,
which holds the config comments and the CLI help to the same names. Every class is built the same
way, ``cls(config, clock)``: ``config`` is the worker's ``SchedulerConfig`` (one flat section, so a
deployment switches policies by name alone), ``clock`` the one request arrival times come from.
A new policy is its module, its test and one entry here (notes/extension_points.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from radixfair.config_loading import by_name, unknown_choice
from radixfair_engine.config import SchedulerConfig
from radixfair_engine.scheduler.base import Clock, SchedulingPolicy
from radixfair_engine.scheduler.dlpm import DLPMPolicy
from radixfair_engine.scheduler.fcfs import FCFSPolicy
from radixfair_engine.scheduler.lpm import LPMPolicy
from radixfair_engine.scheduler.lpm_aging import LPMAgingPolicy
from radixfair_engine.scheduler.vtc import VTCPolicy

PolicyFactory = Callable[[SchedulerConfig, Clock], SchedulingPolicy]

# Name -> class, in the order help texts and evaluations list them. The name is the class's own.
POLICIES: dict[str, PolicyFactory] = by_name(
    "scheduling policy", (FCFSPolicy, LPMPolicy, LPMAgingPolicy, VTCPolicy, DLPMPolicy)
)


def names() -> tuple[str, ...]:
    """Every local policy name, in registry order."""
    return tuple(POLICIES)


def build_policy(config: SchedulerConfig, clock: Clock = time.monotonic) -> SchedulingPolicy:
    """A fresh policy for ``config.policy``; ValueError naming the choices for an unknown name.

    ``clock`` is the one request arrival times come from (a simulator passes its virtual clock);
    only policies that weigh waiting time read it. The parameters were checked when ``config``
    was built (``SchedulerConfig.__post_init__``).
    """
    factory = POLICIES.get(config.policy)
    if factory is None:
        raise ValueError(unknown_choice("scheduling policy", config.policy, POLICIES))
    return factory(config, clock)
