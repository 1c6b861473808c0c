"""Holding arrivals back from decode-only steps (prefill_batching) through the real engine.

The engine runs a tiny random Llama on the CPU with the hold switched on explicitly ("auto" is on
only where decode steps replay CUDA graphs). Steps are counted, never timed.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from worker.engine_harness import greedy, make_stack

from radixfair_engine.config import EngineConfig, PrefillBatchingConfig
from radixfair_engine.engine import Engine
from radixfair_engine.model_runner import SamplingRunner
from radixfair_engine.request import Request, RequestStatus

MAX_WAIT = 4
RATIO = 0.25


def hold_engine(model_dir, enabled: bool | str = True, ratio: float = RATIO, **engine: object) -> Engine:
    settings = {"max_running_requests": 64, "max_batched_tokens": 1024, "num_pages": 512, **engine}
    batching = PrefillBatchingConfig(enabled=enabled, max_wait_steps=MAX_WAIT, waiting_ratio=ratio)
    return make_stack(model_dir, prefill_batching=batching, **settings).engine


def prompt(seed: int, length: int = 6) -> list[int]:
    return [(seed * 131 + 7 * i) % 2000 + 100 for i in range(length)]


class EagerCount(SamplingRunner):
    """The engine's own model runner (and its sampler), counting the forward passes with a prefill
    chunk (eager on a GPU)."""

    def __init__(self, runner) -> None:
        super().__init__(runner.sampler)
        self.runner = runner
        self.eager = 0

    def forward(self, chunks, carry=None):
        self.eager += any(c.length != 1 for c in chunks)
        return self.runner.forward(chunks)


class Driver:
    """Submits requests at given steps and records the step at which each was first admitted."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.counter = EagerCount(engine.runner)
        engine.runner = self.counter
        self.admitted_at: dict[str, int] = {}
        self.queued_at: dict[str, int] = {}

    def step(self, arrivals=()) -> list[Request]:
        """One engine step; returns the requests it finished."""
        engine = self.engine
        for request in arrivals:
            engine.submit(request)
        pending = [r for r in (*engine.waiting, *arrivals) if r.request_id not in self.admitted_at]
        outputs = engine.step()
        for request in pending:
            self.queued_at.setdefault(request.request_id, request.queued_step)
            if request.times_admitted and request.request_id not in self.admitted_at:
                self.admitted_at[request.request_id] = engine.steps - 1
        return [o.request for o in outputs if o.finished]

    def waited(self, request: Request) -> int:
        return self.admitted_at[request.request_id] - self.queued_at[request.request_id]


def test_config_is_validated_and_auto_follows_decode_graphs():
    with pytest.raises(ValueError, match="prefill_batching.enabled"):
        PrefillBatchingConfig(enabled="sometimes")
    with pytest.raises(ValueError, match="max_wait_steps"):
        PrefillBatchingConfig(max_wait_steps=-1)
    with pytest.raises(ValueError, match="waiting_ratio"):
        PrefillBatchingConfig(waiting_ratio=0)
    assert EngineConfig(device="cpu").decode_graph_rows == 0
    assert (
        EngineConfig(device="cuda", max_running_requests=64, cuda_graph_max_batch=256).decode_graph_rows == 64
    )
    assert EngineConfig(device="cuda", cuda_graph_max_batch=0).decode_graph_rows == 0


def test_auto_never_holds_on_the_cpu(tiny_model_dir):
    engine = hold_engine(tiny_model_dir, enabled="auto")
    driver = Driver(engine)
    driver.step([greedy(prompt(i), 12, f"early-{i}", ignore_eos=True) for i in range(8)])
    late = greedy(prompt(99), 4, "late", ignore_eos=True)
    driver.step([late])
    assert driver.waited(late) == 0


def test_an_arrival_waits_exactly_max_wait_steps_beside_a_large_decode_batch(tiny_model_dir):
    engine = hold_engine(tiny_model_dir)
    driver = Driver(engine)
    decoding = [greedy(prompt(i), 40, f"decoding-{i}", ignore_eos=True) for i in range(16)]
    driver.step(decoding)  # an idle engine admits at once
    assert {driver.waited(r) for r in decoding} == {0}
    driver.step()
    late = greedy(prompt(99), 4, "late", ignore_eos=True)
    driver.step([late])
    # 1 waiting < ceil(0.25 x 16) = 4: only the step bound lets it in.
    while "late" not in driver.admitted_at:
        driver.step()
    assert driver.waited(late) == MAX_WAIT


def test_enough_waiting_requests_end_the_hold_at_once(tiny_model_dir):
    engine = hold_engine(tiny_model_dir)
    driver = Driver(engine)
    driver.step([greedy(prompt(i), 40, f"decoding-{i}", ignore_eos=True) for i in range(16)])
    driver.step()
    arrivals = [greedy(prompt(50 + i), 4, f"late-{i}", ignore_eos=True) for i in range(math.ceil(RATIO * 16))]
    driver.step(arrivals)
    assert {driver.waited(r) for r in arrivals} == {0}


def test_a_step_with_a_prefill_in_progress_admits_at_once(tiny_model_dir):
    # A 32-token budget chunks the 40-token prompt over two steps: the second is eager anyway.
    engine = hold_engine(tiny_model_dir, max_batched_tokens=32, max_running_requests=16)
    driver = Driver(engine)
    decoding = [greedy(prompt(i, 2), 40, f"decoding-{i}", ignore_eos=True) for i in range(6)]
    long = greedy(prompt(7, 40), 4, "long", ignore_eos=True)
    driver.step([*decoding, long])
    assert long.num_computed_tokens < len(long.prompt_ids)
    late = greedy(prompt(99, 2), 4, "late", ignore_eos=True)
    driver.step([late])
    assert long.num_computed_tokens == len(long.prompt_ids)
    assert driver.waited(late) == 0


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    schedule=st.lists(
        st.tuples(st.integers(0, 20), st.integers(1, 12), st.integers(1, 12)), min_size=1, max_size=16
    )
)
def test_no_request_waits_longer_than_the_bound(tiny_model_dir, schedule):
    """Any arrival pattern, with room for everyone: each request joins within MAX_WAIT steps."""
    engine = hold_engine(tiny_model_dir)
    driver = Driver(engine)
    by_step: dict[int, list[Request]] = {}
    requests = []
    for n, (at, length, new) in enumerate(schedule):
        request = greedy(prompt(n, length), new, f"r{n}", ignore_eos=True)
        by_step.setdefault(at, []).append(request)
        requests.append(request)
    for step in range(200):
        driver.step(by_step.pop(step, []))
        if not by_step and not engine.has_work():
            break
    assert all(r.status is RequestStatus.FINISHED for r in requests)
    assert max(driver.waited(r) for r in requests) <= MAX_WAIT


STEPS = 80


def closed_loop(model_dir, enabled: bool) -> tuple[int, int, int]:
    """8 clients, each sending its next request as one ends, for STEPS steps.

    Returns the eager steps, the requests finished, and the longest wait for admission in steps.
    A waiting ratio of 1 leaves the step bound as the only end of a hold here: 8 clients never
    have as many waiting as decoding, their lengths being staggered.
    """
    engine = hold_engine(model_dir, enabled=enabled, ratio=1.0)
    driver = Driver(engine)
    sent = 0

    def new(client: int) -> Request:
        nonlocal sent
        sent += 1
        # Staggered lengths, so finishes (and arrivals) spread over the steps as in steady serving;
        # ignore_eos with max_tokens fixes every finish, whatever tokens the model draws.
        return greedy(prompt(sent), 6 + (client * 5 + sent) % 11, f"c{client}-{sent}", ignore_eos=True)

    owner = {}
    arrivals = []
    for client in range(8):
        arrivals.append(new(client))
        owner[arrivals[-1].request_id] = client
    finished = []
    for _ in range(STEPS):
        done = driver.step(arrivals)
        finished += done
        arrivals = [new(owner[r.request_id]) for r in done]
        owner.update({r.request_id: owner[d.request_id] for r, d in zip(arrivals, done)})
    longest = max(driver.waited(r) for r in finished)
    return driver.counter.eager, len(finished), longest


def test_steady_load_makes_fewer_eager_steps_with_the_hold(tiny_model_dir):
    """The point of the hold: arrivals spread over the steps share eager steps instead of each making one.

    With the hold, an eager step admits everything waiting, and the next arrival then waits MAX_WAIT
    steps: eager steps are at least MAX_WAIT + 1 apart, so at most STEPS / (MAX_WAIT + 1) + 1 of them.
    Without it, every step with an arrival is eager.
    """
    eager_off, finished_off, longest_off = closed_loop(tiny_model_dir, enabled=False)
    eager_on, finished_on, longest_on = closed_loop(tiny_model_dir, enabled=True)
    assert longest_off == 0 and longest_on <= MAX_WAIT
    bound = STEPS // (MAX_WAIT + 1) + 1
    assert eager_on <= bound < eager_off, (eager_on, bound, eager_off)
    # A request is held at most MAX_WAIT steps of its 7-16, so work done differs by less than half.
    assert finished_on >= finished_off / 2, (finished_on, finished_off)
