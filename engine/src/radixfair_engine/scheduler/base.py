"""The interface every local scheduling policy implements.

The engine owns the waiting queue, the radix cache and memory; a policy only
decides *which* waiting requests to admit next and keeps whatever fairness
state it needs, which it reports through ``fairness_state``. A new policy is
one new module implementing this protocol, with the constructor
``(config: SchedulerConfig, clock: Clock)``, and one line in
``scheduler.registry`` (notes/extension_points.md).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from radixfair_engine.request import Request
from radixfair_engine.scheduler.waiting_tree import CacheNode

# Seconds on the clock request arrival times come from (time.monotonic, or a simulator's virtual clock).
Clock = Callable[[], float]
# Output tokens per (client_id, request weight), as SchedulingPolicy.on_output_tokens takes them.
OutputCounts = Mapping[tuple[str, float], int]


@dataclass(frozen=True)
class FairnessState:
    """What a policy's fairness rule holds per client, as the worker publishes it (load reports, metrics).

    Empty for a policy that keeps none: FCFS and LPM order requests and hold no per-client state.
    """

    # DLPM's deficit q_i per client, in weighted tokens.
    deficits: dict[str, float] = field(default_factory=dict)
    # VTC's virtual counter per client (weight-normalised service).
    virtual_counters: dict[str, float] = field(default_factory=dict)
    # Deficit refills so far: many refills per admission mean the quantum is small for the load.
    refills: int = 0


class PrefixMatcher(Protocol):
    """The radix cache as policies read it (never change it).

    ``root`` and ``page_size`` let a policy walk the tree once for many
    waiting requests that share a prefix (see ``waiting_tree``), rather than
    calling ``match_length`` once per request.
    """

    page_size: int

    @property
    def root(self) -> CacheNode: ...

    def match_length(self, token_ids: Sequence[int]) -> int:
        """Leading tokens of ``token_ids`` the radix cache holds now (page-aligned)."""
        ...


class AdmissionBudget(Protocol):
    def try_admit(self, request: Request) -> bool:
        """Admits ``request`` into the running batch if it fits this step's
        request, token and page budget.

        On success the engine has locked the request's cached prefix, set
        ``request.num_cached_tokens`` (first admission) and
        ``request.num_computed_tokens``, and moved it to RUNNING. On failure
        nothing changed. Policies call this in their chosen order and stop or
        skip as their rule says.
        """
        ...

    def holds(self, request: Request) -> bool:
        """True while ``request`` should wait for a shared prefix another request is computing.

        The in-batch prefix rule (``scheduler.in_batch_prefix``): prefix-ordering
        policies skip a held request (they do not stop there, and do not charge
        it); it becomes admissible by itself once the leader's pages are cached
        or the leader leaves. Locality-blind policies (FCFS, VTC) ignore it.
        """
        ...


class SchedulingPolicy(Protocol):
    """One local scheduling rule; built by ``scheduler.registry.build_policy`` as ``cls(config, clock)``.

    ``clock`` is the one request arrival times come from; only policies that weigh waiting time read it.
    """

    name: str

    def on_arrival(self, request: Request) -> None:
        """A request joined the waiting queue (new, or back after preemption)."""
        ...

    def pick_next(
        self, waiting: Sequence[Request], cache: PrefixMatcher, budget: AdmissionBudget
    ) -> list[Request]:
        """Admits requests through ``budget`` and returns those admitted, in order."""
        ...

    def on_output_tokens(self, counts: OutputCounts) -> None:
        """Output tokens generated for running requests: ``counts[(client_id, weight)]`` tokens for
        the client's requests of that weight, keys in the order of each one's last token.

        The engine reports a step's tokens summed this way, not once per request: the charge is
        per token and per client, so the sums move every policy's state as per-token calls would,
        at a cost per client rather than per row (the accounting ran for every row of every step).
        ``counts`` is the caller's: read it during the call, do not keep it.
        """
        ...

    def on_finished(self, request: Request) -> None:
        """A request left the engine (finished or cancelled)."""
        ...

    def client_service(self) -> dict[str, float]:
        """Weighted tokens of service each client has received so far."""
        ...

    def fairness_state(self) -> FairnessState:
        """This policy's per-client fairness state now (a copy: the caller may keep it)."""
        ...
