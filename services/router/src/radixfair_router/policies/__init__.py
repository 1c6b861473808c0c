"""Routing policies behind one protocol (base.RoutingPolicy); ``build_policy`` picks one by name."""

from __future__ import annotations

from radixfair_router.config import CostConfig, PolicyConfig
from radixfair_router.ledger import Ledger
from radixfair_router.policies.base import RoutingDecision, RoutingPolicy, RoutingRequest, WorkerState
from radixfair_router.policies.cache_aware import CacheAwarePolicy
from radixfair_router.policies.d2lpm import D2lpmPolicy
from radixfair_router.policies.d2lpm_gated import D2lpmGatedPolicy
from radixfair_router.policies.global_vtc import GlobalVtcPolicy
from radixfair_router.policies.least_load import LeastLoadPolicy
from radixfair_router.policies.round_robin import RoundRobinPolicy


def build_policy(config: PolicyConfig, costs: CostConfig, ledger: Ledger) -> RoutingPolicy:
    if config.name == "round_robin":
        return RoundRobinPolicy(ledger, costs)
    if config.name == "least_load":
        return LeastLoadPolicy(ledger, costs)
    if config.name == "cache_aware":
        return CacheAwarePolicy(ledger, costs, config)
    if config.name == "global_vtc":
        return GlobalVtcPolicy(ledger, costs)
    if config.name == "d2lpm":
        return D2lpmPolicy(ledger, costs, config)
    if config.name == "d2lpm_gated":
        return D2lpmGatedPolicy(ledger, costs, config)
    raise ValueError(f"unknown routing policy {config.name!r}")


__all__ = ["RoutingDecision", "RoutingPolicy", "RoutingRequest", "WorkerState", "build_policy"]
