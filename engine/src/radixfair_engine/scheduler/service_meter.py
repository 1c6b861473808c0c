"""What a request costs in weighted tokens of service, and what each client has received.

Every policy charges the same way, so that service is comparable across
policies: ``w_in`` per prompt token the engine computed at admission,
``cached_token_weight · w_in`` per prompt token served from the prefix cache
(0 by default, as in the paper), and ``w_out`` per output token as it is
generated. A request re-admitted after a preemption is not charged its input
again: the recompute is the engine's choice under memory pressure, not the
client's demand, and charging it would penalise exactly the clients whose
requests the engine chose to evict.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping

from radixfair_engine.config import SchedulerConfig
from radixfair_engine.request import Request
from radixfair_engine.scheduler.charge_sums import add_repeatedly


class ServiceMeter:
    """Charges requests by the rule above and sums each client's service.

    ``client_service`` is raw service, ``w_in · computed input + w_out ·
    output``: it is not divided by the client's weight and leaves out the
    cached-token fraction, so it measures work the engine did for the client.
    The charges returned (which do include the cached fraction) are what
    fairness state such as deficits and virtual counters move by.
    """

    def __init__(self, config: SchedulerConfig) -> None:
        self._w_in = config.input_token_weight
        self._w_out = config.output_token_weight
        self._w_cached = config.cached_token_weight * config.input_token_weight
        self._service: dict[str, float] = defaultdict(float)

    def charge_admission(self, request: Request) -> float:
        """Charge for a request that ``try_admit`` just accepted; 0 on re-admission."""
        if request.times_admitted > 1:
            return 0.0
        cached = request.num_cached_tokens
        computed = len(request.prompt_ids) - cached
        self._service[request.client_id] += self._w_in * computed
        return self._w_in * computed + self._w_cached * cached

    def charge_outputs(self, counts: Mapping[tuple[str, float], int]) -> float:
        """Books the output tokens ``counts`` holds per (client, weight); returns the charge per token."""
        w_out, service = self._w_out, self._service
        for (client, _), count in counts.items():
            # One token a client a step is the common case: one addition, no call.
            value = service[client]
            service[client] = value + w_out if count == 1 else add_repeatedly(value, w_out, count)
        return w_out

    def client_service(self) -> dict[str, float]:
        return dict(self._service)
