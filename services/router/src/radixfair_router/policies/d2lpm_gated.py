"""D2LPM with late binding: the router's gate decides *who* goes next, D2LPM decides *where*.

D2LPM binds a request to a worker when it arrives, so a client can wait on one
worker while a flooder is served on all the others: no placement rule bounds
the service gap across the cluster then (docs/cluster-fairness.md). This
variant holds requests in the router's admission gate (admission_gate.py,
``vtc_slots_per_worker`` requests in flight per healthy worker) and gives each
freed slot to the waiting request whose client has the lowest VTC counter
(service over weight, lifted once when a client starts waiting). Only then is
the request placed, by D2LPM's rule unchanged: longest useful prefix match
among workers with credit and under the balance threshold, with the same
per-(client, worker) deficits. A hot prefix still lands where it is cached,
and each worker's local DLPM still bounds the gap among the requests it holds.

Bound (docs/cluster-fairness.md, "late binding"): while clients A and B both
have a request waiting in the gate, their weight-normalised service differs by
less than ``sum over i in {A, B} of (w_in*L_i + w_out*M_i*F_i) / w_i`` on the
ledger's counters, F_i being the most requests of i in flight at once (at most
slots x workers); no Q and no N except through F.

The cost: worker queues hold at most the slots, so a worker's local prefix
order has less to choose from, and every request takes the gate's hop.
"""

from __future__ import annotations

from collections.abc import Callable

from radixfair_router.admission_gate import VtcAdmissionGate
from radixfair_router.policies.base import vtc_admission_gate
from radixfair_router.policies.d2lpm import D2lpmPolicy


class D2lpmGatedPolicy(D2lpmPolicy):
    """D2LPM's placement behind the router's VTC gate, which this policy's admission hook creates."""

    name = "d2lpm_gated"

    def admission_gate(self, healthy_workers: Callable[[], int]) -> VtcAdmissionGate | None:
        return vtc_admission_gate(self._config, self._ledger, healthy_workers)
