"""Global VTC: fairness by one virtual token counter per client, shared by all replicas.

The counters live in the ledger (Redis), grow with every token of service
divided by the client's weight, and a client returning from idle is lifted
to the lowest active counter (VTC's rule). The worker choice itself is
least-load and blind to the cache, as in the paper's VTC baseline. Which
waiting request goes first is VTC's order: the router holds requests back
once every worker has ``vtc_slots_per_worker`` of them in flight, and each
freed slot goes to the lowest counter (admission_gate.py). With the gate
off (0 slots) it dispatches at once and the counters only record service.
"""

from __future__ import annotations

from collections.abc import Callable

from radixfair_router.admission_gate import VtcAdmissionGate
from radixfair_router.policies.base import vtc_admission_gate
from radixfair_router.policies.least_load import LeastLoadPolicy


class GlobalVtcPolicy(LeastLoadPolicy):
    """Least-load placement; the VTC order lives in the ledger's counters and the admission gate."""

    name = "global_vtc"
    local_policy = "vtc"

    def admission_gate(self, healthy_workers: Callable[[], int]) -> VtcAdmissionGate | None:
        return vtc_admission_gate(self._config, self._ledger, healthy_workers)
