"""Routing policies behind one protocol (base.RoutingPolicy); ``build_policy`` picks one by name
from ``registry.POLICIES``."""

from __future__ import annotations

from radixfair_router.policies.base import RoutingDecision, RoutingPolicy, RoutingRequest, WorkerState
from radixfair_router.policies.registry import build_policy

__all__ = ["RoutingDecision", "RoutingPolicy", "RoutingRequest", "WorkerState", "build_policy"]
