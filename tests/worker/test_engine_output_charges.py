"""The summed output charges (Engine._charge_outputs) against charging every token as it is resolved.

Each token the engine resolves for a request (OutputProcessor.append) is one charge of that request's
(client, weight). The engine may sum them per step, but only in a way a policy cannot tell from
charging every token as it is resolved: at every other policy event (an arrival, a preemption's
re-arrival, an admission, an end) no resolved token may be uncharged, and each summed call must be
the next run of resolved tokens, its keys in the order of each one's last token (the last charged
client is policy state: ServiceStanding). Checked on a real engine over the tiny random Llama, with
overlap on and off, pages so few that requests are preempted, stop tokens and stop strings that end
requests mid-step, aborts mid-run, and rows the device cannot sample (NaN logits).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scheduler_harness import CountingBudget, cache_holding
from scheduler_harness import request as sched_request
from worker.engine_harness import greedy, prompt_encoder
from worker.test_sampler_engine import PoisonedRows

from radixfair_engine.config import EngineConfig, SchedulerConfig
from radixfair_engine.engine_builder import build_engine
from radixfair_engine.request import FinishReason, Request
from radixfair_engine.scheduler.vtc import VTCPolicy

OUTPUT_WEIGHT = 0.1  # not a power of two: sums and per-token charges differ in the last bits


class EventOrder:
    """Wraps the engine's policy and its OutputProcessor.append; ``violations`` lists every policy
    event that a policy charged per token would have seen differently."""

    def __init__(self, engine) -> None:  # noqa: ANN001 - the real Engine
        self.inner = engine.policy
        self.name = self.inner.name
        self.violations: list[tuple] = []
        self.pending: list[tuple[str, float]] = []  # resolved, not yet charged, in row order
        self.resolved: Counter[str] = Counter()
        self.charged: Counter[str] = Counter()
        self.last_charged: str | None = None
        self.last_resolved: str | None = None
        append = engine.output_processor.append

        def spied_append(request: Request, token: int):  # noqa: ANN202 - TokenOutcome
            self.pending.append((request.client_id, request.weight))
            self.resolved[request.client_id] += 1
            return append(request, token)

        engine.output_processor.append = spied_append
        engine.policy = self

    def _quiet(self, event: str) -> None:
        if self.pending:
            self.violations.append((event, "uncharged tokens", list(self.pending)))

    def on_output_tokens(self, counts) -> None:  # noqa: ANN001 - OutputCounts
        total = sum(counts.values())
        run, self.pending = self.pending[:total], self.pending[total:]
        expected: dict[tuple[str, float], int] = {}
        for key in run:
            expected[key] = expected.pop(key, 0) + 1
        if list(expected.items()) != list(counts.items()):
            self.violations.append(("output", dict(counts), expected))
        for (client, _), count in counts.items():
            self.charged[client] += count
            self.last_charged = client
        if run:
            self.last_resolved = run[-1][0]
        self.inner.on_output_tokens(counts)

    def on_arrival(self, request: Request) -> None:
        self._quiet(f"arrival {request.request_id}")
        self.inner.on_arrival(request)

    def pick_next(self, waiting, cache, budget):  # noqa: ANN001, ANN201 - the protocol's types
        self._quiet("pick_next")
        return self.inner.pick_next(waiting, cache, budget)

    def on_finished(self, request: Request) -> None:
        self._quiet(f"finished {request.request_id}")
        if self.last_charged != self.last_resolved:
            self.violations.append(("last charged", self.last_charged, self.last_resolved))
        self.inner.on_finished(request)

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


jobs = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "c"]),
        st.integers(min_value=3, max_value=40),  # prompt length
        st.integers(min_value=1, max_value=14),  # max_tokens
        st.sampled_from(["length", "stop_ids", "stop_string", "poisoned"]),
        st.integers(min_value=0, max_value=12),  # the step it is aborted at (12: never)
    ),
    min_size=1,
    max_size=10,
)


@settings(max_examples=16, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    jobs=jobs,
    policy=st.sampled_from(["dlpm", "vtc", "fcfs"]),
    overlap=st.booleans(),
    num_pages=st.sampled_from([12, 24, 256]),
    weights=st.fixed_dictionaries({c: st.sampled_from([1.0, 3.0]) for c in "abc"}),
)
def test_every_policy_event_sees_what_charging_each_token_as_resolved_would(
    tiny_model_dir: Path,
    jobs: list[tuple[str, int, int, str, int]],
    policy: str,
    overlap: bool,
    num_pages: int,
    weights: dict[str, float],
) -> None:
    scheduler = SchedulerConfig(policy=policy, input_token_weight=0.0, output_token_weight=OUTPUT_WEIGHT)
    config = EngineConfig(
        scheduler=scheduler,
        num_pages=num_pages,
        page_size=4,
        max_batched_tokens=64,
        overlap_schedule=overlap,
    )
    engine = build_engine(config, tiny_model_dir, prompt_encoder(tiny_model_dir)).engine
    poisoned = {f"r{i}" for i, job in enumerate(jobs) if job[3] == "poisoned"}
    if poisoned:
        engine.runner = PoisonedRows(engine.runner, poisoned)
    order = EventOrder(engine)
    requests: list[Request] = []
    aborts: dict[int, list[str]] = {}
    for i, (client, length, max_tokens, ending, abort_at) in enumerate(jobs):
        prompt = [(7 * i + 11 * j) % 900 + 10 for j in range(length)]
        stops = {}
        if ending == "stop_ids":
            stops = {"stop_token_ids": tuple(range(10, 1000, 5))}
        elif ending == "stop_string":
            stops = {"stop_strings": ("e",)}
        request = greedy(prompt, max_tokens, f"r{i}", client=client, ignore_eos=True, **stops)
        request.weight = weights[client]
        requests.append(request)
        engine.submit(request)
        aborts.setdefault(abort_at, []).append(request.request_id)
    for step in range(2_000):
        for request_id in aborts.get(step, []):
            engine.abort(request_id)
        if not engine.has_work():
            break
        engine.step()
    assert not engine.has_work()

    assert order.violations == []
    assert order.pending == []
    produced: Counter[str] = Counter()
    for request in requests:
        produced[request.client_id] += len(request.output_ids)
        assert request.finish_reason is not None
        if request.finish_reason is FinishReason.ERROR:
            assert request.request_id in poisoned
    # Each resolved token was charged once, and a request keeps exactly the tokens charged for it.
    assert order.charged == order.resolved
    assert +order.charged == +produced
    service = engine.policy.client_service()
    for client, tokens in produced.items():
        assert abs(service.get(client, 0.0) - OUTPUT_WEIGHT * tokens) <= 1e-9 * max(1, tokens)
        if tokens:
            assert engine.client_stats[client].completion_tokens == tokens


def test_equal_service_stays_an_exact_tie_however_a_steps_tokens_were_grouped() -> None:
    cache = cache_holding()
    policy = VTCPolicy(SchedulerConfig(policy="vtc", input_token_weight=1.0, output_token_weight=2.0))
    queue = [
        sched_request("a0", "a", [1] * 3, arrival=0.0, weight=3.0),
        sched_request("b0", "b", [2] * 3, arrival=1.0, weight=3.0),
        sched_request("a1", "a", [1] * 3, arrival=2.0, weight=3.0),
        sched_request("b1", "b", [2] * 3, arrival=3.0, weight=3.0),
    ]
    for r in queue:
        policy.on_arrival(r)
    assert [r.request_id for r in policy.pick_next(queue, cache, CountingBudget(cache, limit=2))] == [
        "a0",
        "b0",
    ]
    policy.on_output_tokens({("a", 3.0): 3})  # a's three tokens in one step (three rows of a)
    for _ in range(3):
        policy.on_output_tokens({("b", 3.0): 1})  # b's three tokens over three steps

    counters = policy.counters()
    admitted = policy.pick_next(queue[2:], cache, CountingBudget(cache, limit=1))

    # Both received 3 prompt + 6 output units at weight 3: equal counters, so the older head (a1) goes.
    assert counters["a"] == counters["b"], counters
    assert [r.request_id for r in admitted] == ["a1"]
