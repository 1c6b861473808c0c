"""The interface every local scheduling policy implements.

The engine owns the waiting queue, the radix cache and memory; a policy only
decides *which* waiting requests to admit next and keeps whatever fairness
state it needs. A new policy is one new module implementing this protocol,
registered in ``scheduler.registry``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from radixfair_worker.request import Request
from radixfair_worker.scheduler.waiting_tree import CacheNode


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
    name: str

    def on_arrival(self, request: Request) -> None:
        """A request joined the waiting queue (new, or back after preemption)."""
        ...

    def pick_next(
        self, waiting: Sequence[Request], cache: PrefixMatcher, budget: AdmissionBudget
    ) -> list[Request]:
        """Admits requests through ``budget`` and returns those admitted, in order."""
        ...

    def on_output_tokens(self, request: Request, count: int) -> None:
        """``count`` tokens were generated for a running request."""
        ...

    def on_finished(self, request: Request) -> None:
        """A request left the engine (finished or cancelled)."""
        ...

    def client_service(self) -> dict[str, float]:
        """Weighted tokens of service each client has received so far."""
        ...
