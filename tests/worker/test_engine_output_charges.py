"""A step's output tokens reach the policy summed per (client, weight) (Engine._charge_outputs), not
once per row: the sums must equal a charge per token, and a request's end must never be seen by the
policy before every token of its client's rows up to it has been charged.

Real engines on the tiny random Llama, several clients and weights, requests of mixed lengths that
end at different steps; the policy is wrapped to log what it is told, in order.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from worker.engine_harness import greedy, prompt_encoder

from radixfair_engine.config import EngineConfig, SchedulerConfig
from radixfair_engine.engine_builder import build_engine
from radixfair_engine.request import Request

OUTPUT_WEIGHT = 2.0


class ChargeLog:
    """The engine's policy, logging ("output", client, weight, count) and ("finished", request); at
    each end it also compares the tokens charged per client with the tokens the client's requests
    hold resolved at that moment (``stale``: the ends where they differed)."""

    def __init__(self, policy, requests: list[Request]) -> None:  # noqa: ANN001 - any SchedulingPolicy
        self.inner = policy
        self.name = policy.name
        self.log: list[tuple] = []
        self.charged: Counter[str] = Counter()
        self.stale: list[tuple[str, dict[str, int], dict[str, int]]] = []
        self._requests = requests

    def on_output_tokens(self, counts) -> None:  # noqa: ANN001 - OutputCounts
        for (client_id, weight), count in counts.items():
            self.log.append(("output", client_id, weight, count))
            self.charged[client_id] += count
        self.inner.on_output_tokens(counts)

    def on_finished(self, request: Request) -> None:
        self.log.append(("finished", request))
        # Mid-step, rows before this one hold their token and rows after it still a placeholder.
        resolved: Counter[str] = Counter()
        for r in self._requests:
            resolved[r.client_id] += len(r.output_ids) - r.pending_tokens
        if +resolved != +self.charged:
            self.stale.append((request.request_id, dict(resolved), dict(self.charged)))
        self.inner.on_finished(request)

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


jobs = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "c"]),
        st.integers(min_value=3, max_value=40),  # prompt length
        st.integers(min_value=1, max_value=12),  # max_tokens
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    jobs=jobs,
    policy=st.sampled_from(["dlpm", "vtc", "fcfs"]),
    weights=st.fixed_dictionaries({c: st.sampled_from([1.0, 2.0]) for c in "abc"}),
)
def test_summed_charges_equal_a_charge_per_token_and_precede_each_end(
    tiny_model_dir: Path, jobs: list[tuple[str, int, int]], policy: str, weights: dict[str, float]
) -> None:
    scheduler = SchedulerConfig(policy=policy, input_token_weight=0.0, output_token_weight=OUTPUT_WEIGHT)
    config = EngineConfig(scheduler=scheduler, num_pages=256, page_size=16, max_batched_tokens=256)
    engine = build_engine(config, tiny_model_dir, prompt_encoder(tiny_model_dir)).engine
    requests: list[Request] = []
    logged = ChargeLog(engine.policy, requests)
    engine.policy = logged
    for i, (client, length, max_tokens) in enumerate(jobs):
        prompt = [(7 * i + 11 * j) % 900 + 10 for j in range(length)]
        request = greedy(prompt, max_tokens, f"r{i}", client=client, ignore_eos=i % 2 == 0)
        request.weight = weights[client]
        requests.append(request)
        engine.submit(request)
    for _ in range(2_000):
        if not engine.has_work():
            break
        engine.step()
    assert not engine.has_work()

    # The policy heard of every end with every token resolved so far charged, its client's and others'.
    assert logged.stale == []
    produced = Counter()
    for request in requests:
        produced[request.client_id] += len(request.output_ids)
    for entry in logged.log:
        if entry[0] == "output":
            _, client, weight, count = entry
            assert count > 0 and weight == weights[client], entry
    # Each token charged once: summed per call, the charges are the tokens the requests kept.
    assert logged.charged == produced
    service = logged.client_service()
    for client, tokens in produced.items():
        assert service.get(client, 0.0) == OUTPUT_WEIGHT * tokens
        assert engine.client_stats[client].completion_tokens == tokens
