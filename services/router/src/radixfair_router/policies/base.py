"""The one interface every routing policy implements, and what it sees.

A policy gets the request and a snapshot of the candidate workers (load,
estimated prefix match, approximate cache size) and returns a decision.
Every policy admits the request into the ledger, so per-client service,
VTC counters and D2LPM deficits stay complete whichever policy runs, and a
deployment can switch policies without losing fairness state.

A policy owns its whole behaviour: where a request goes (``route``), the
ledger rule its admission runs (``ledger_rule``), and whether requests wait
in an admission gate before it places them (``admission_gate``); the router
and the simulator ask it, never its name. Every policy is built the same way,
``cls(config, costs, ledger)``, from ``policies.registry``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import ClassVar, Literal, NamedTuple, Protocol

from radixfair_router.admission_gate import VtcAdmissionGate
from radixfair_router.config import CostConfig, PolicyConfig
from radixfair_router.ledger import Ledger
from radixfair_router.ledger_state import AdmitCandidate

# The rules the ledger's admission runs (ledger_state.py and the Lua script in ledger_scripts.py):
# "fixed" books the request on the worker the policy chose; "d2lpm" refills the client's
# per-worker deficits and takes the first eligible candidate with credit (or the fallback).
LedgerRule = Literal["fixed", "d2lpm"]

# Called with the worker a route's admission will most likely choose, before the admission's Redis
# round trip (Ledger.admit's ``ahead``): the router starts the worker call meanwhile.
DispatchAhead = Callable[[str], None]


class WorkerState(NamedTuple):
    """One candidate worker as the router sees it at routing time.

    A NamedTuple for the same reason as AdmitCandidate: one per worker per request.
    """

    worker_id: str
    # Requests queued or running there, by the router's best estimate.
    load: int
    # Leading prompt tokens this worker is estimated to hold in its cache.
    prefix_match: int
    # Tokens the router's approximate tree attributes to this worker.
    cache_size: int = 0


@dataclass(frozen=True)
class RoutingRequest:
    client_id: str
    weight: float
    prompt_tokens: int


@dataclass(frozen=True)
class RoutingDecision:
    worker_id: str
    policy: str
    # Why this worker: "longest_match", "next_best_match", "least_load",
    # "round_robin", "smallest_cache", "balance", "no_useful_match" (d2lpm: no match above
    # the cache threshold, so the least loaded worker with credit).
    reason: str
    prefix_match: int
    # Input cost charged to the ledger at routing (corrected when usage is known).
    charged: float
    deficit: float
    refills: int = 0


class RoutingPolicy(Protocol):
    name: str
    # How the ledger admits this policy's requests (see LedgerRule).
    ledger_rule: LedgerRule
    # The worker scheduling policy this routing policy is meant to run over, and is evaluated with
    # (bench/eval/eval_runs.py): a name in the worker's scheduler registry.
    local_policy: str

    async def route(
        self, request: RoutingRequest, workers: Sequence[WorkerState], ahead: DispatchAhead | None = None
    ) -> RoutingDecision:
        """Picks one of ``workers`` (never empty) and admits the request into the ledger, passing
        ``ahead`` to ``Ledger.admit``."""
        ...

    def admission_gate(self, healthy_workers: Callable[[], int]) -> VtcAdmissionGate | None:
        """The gate requests wait in before ``route`` (the router and the simulator create it from
        this), or None to route each request at once. ``healthy_workers`` counts the workers now."""
        ...


class PolicyBase:
    """What routing policies share: the one constructor, no admission gate, the "fixed" ledger rule."""

    name: ClassVar[str]
    local_policy: ClassVar[str]
    ledger_rule: ClassVar[LedgerRule] = "fixed"

    def __init__(self, config: PolicyConfig, costs: CostConfig, ledger: Ledger) -> None:
        self._config = config
        self._costs = costs
        self._ledger = ledger

    def admission_gate(self, healthy_workers: Callable[[], int]) -> VtcAdmissionGate | None:
        return None


def vtc_admission_gate(
    config: PolicyConfig, ledger: Ledger, healthy_workers: Callable[[], int]
) -> VtcAdmissionGate | None:
    """The VTC gate (admission_gate.py): ``vtc_slots_per_worker`` requests in flight per healthy
    worker, each freed slot to the lowest counter; None when the slots are 0 (the gate is off)."""
    slots = config.vtc_slots_per_worker
    if slots <= 0:
        return None
    return VtcAdmissionGate(ledger, lambda: slots * healthy_workers())


def input_cost(prompt_tokens: int, prefix_match: int, costs: CostConfig) -> float:
    """DLPM's admission charge: uncached prompt tokens at w_in, cached ones at the cached fraction."""
    cached = min(prefix_match, prompt_tokens)
    uncached = prompt_tokens - cached
    return costs.input_token_weight * (uncached + costs.cached_token_weight * cached)


# Lower load first, then worker id: least_loaded's order, as a C-level sort key.
LOAD_THEN_ID = attrgetter("load", "worker_id")


def least_loaded(workers: Sequence[WorkerState]) -> WorkerState:
    return min(workers, key=LOAD_THEN_ID)


def is_imbalanced(loads: Sequence[int], abs_threshold: int, rel_threshold: float) -> bool:
    """The SGLang router's test: far apart both in absolute and in relative terms."""
    high, low = max(loads), min(loads)
    return high - low > abs_threshold and high > rel_threshold * low


async def admit_fixed(
    ledger: Ledger,
    costs: CostConfig,
    request: RoutingRequest,
    worker: WorkerState,
    policy: str,
    reason: str,
    ahead: DispatchAhead | None = None,
) -> RoutingDecision:
    """Books a request the policy already placed: its input cost on the chosen worker."""
    cost = input_cost(request.prompt_tokens, worker.prefix_match, costs)
    candidate = [AdmitCandidate(worker.worker_id, True, cost)]
    admission = await ledger.admit(
        request.client_id, request.weight, "fixed", candidate, worker.worker_id, ahead
    )
    return RoutingDecision(
        worker_id=worker.worker_id,
        policy=policy,
        reason=reason,
        prefix_match=worker.prefix_match,
        charged=admission.charged,
        deficit=admission.deficit,
    )
