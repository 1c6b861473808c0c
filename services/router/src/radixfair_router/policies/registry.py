"""The registry of routing policies: every name a router accepts, and the class it builds.

Everything that lists routing policies reads ``POLICIES`` (or ``names()``): the router's config
check (``RouterConfig``), ``build_policy`` here, the evaluation scripts (bench/eval/eval_runs.py and
the eval_* defaults), and ``tests/bench/test_policy_names.py``, which holds the deploy config
comments and the CLI help to the same names. Every class is built the same way,
``cls(config, costs, ledger)``, and carries its whole behaviour (base.RoutingPolicy): the
placement, the ledger rule, the admission gate and the worker policy it pairs with. A new policy
is its module, its test and one entry here (notes/extension_points.md).
"""

from __future__ import annotations

from radixfair.config_loading import by_name, unknown_choice
from radixfair_router.config import CostConfig, PolicyConfig
from radixfair_router.ledger import Ledger
from radixfair_router.policies.base import PolicyBase, RoutingPolicy
from radixfair_router.policies.cache_aware import CacheAwarePolicy
from radixfair_router.policies.d2lpm import D2lpmPolicy
from radixfair_router.policies.d2lpm_gated import D2lpmGatedPolicy
from radixfair_router.policies.global_vtc import GlobalVtcPolicy
from radixfair_router.policies.least_load import LeastLoadPolicy
from radixfair_router.policies.round_robin import RoundRobinPolicy

# Name -> class, in the order help texts and evaluations list them. The name is the class's own.
POLICIES: dict[str, type[PolicyBase]] = by_name(
    "routing policy",
    (
        RoundRobinPolicy,
        LeastLoadPolicy,
        CacheAwarePolicy,
        GlobalVtcPolicy,
        D2lpmPolicy,
        D2lpmGatedPolicy,
    ),
)


def names() -> tuple[str, ...]:
    """Every routing policy name, in registry order."""
    return tuple(POLICIES)


def build_policy(config: PolicyConfig, costs: CostConfig, ledger: Ledger) -> RoutingPolicy:
    """A fresh policy for ``config.name``; ValueError names the choices for an unknown name."""
    cls = POLICIES.get(config.name)
    if cls is None:
        raise ValueError(unknown_choice("routing policy", config.name, POLICIES))
    return cls(config, costs, ledger)
