"""DLPM's per-request wait bound, through the real engine on a tiny random Llama.

The bound (derived in radixfair_engine.scheduler.dlpm, rule (d)): a waiting
request is overtaken by at most ``max_overtakes`` (K) requests of its own
client that joined the waiting queue after it (arrival, or return after a
preemption). Without it, LPM order lets a client's cache-hot requests starve
its own cache-cold one for ever (issue 12, point 6; SGLang #31954).

The policy is wrapped in a recorder that sees, in order, every request that
joins the queue and every admission; overtakes are counted from that log.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from worker.engine_harness import prompt_encoder
from worker.policy_recorder import RecordingPolicy

from radixfair_engine.config import EngineConfig, SchedulerConfig
from radixfair_engine.engine import Engine
from radixfair_engine.engine_builder import build_engine
from radixfair_engine.request import Request, SamplingConfig

PAGE = 16
DOC = list(range(3000, 3048))  # 3 pages: the cached prefix
K = 8  # the default max_overtakes
# Hot requests take 5 steps, 2 at a time: 60 steps admit about 24 of them, well past K.
STEPS = 60


def overtakes(log: list[tuple[str, object]]) -> dict[Request, int]:
    """Per request, the most same-client requests that joined after it and were admitted while it waited."""
    joined: dict[Request, int] = {}
    passed: dict[Request, int] = {}
    worst: dict[Request, int] = {}
    for index, (kind, request) in enumerate(log):
        if kind == "join":
            joined[request], passed[request] = index, 0
        elif kind == "admit":
            worst[request] = max(worst.get(request, 0), passed.pop(request))
            for other in passed:
                if other.client_id == request.client_id and joined[request] > joined[other]:
                    passed[other] += 1
        elif kind == "leave":
            passed.pop(request, None)
    for request, count in passed.items():  # still waiting at the end
        worst[request] = max(worst.get(request, 0), count)
    return worst


def dlpm_engine(model_dir: Path, max_overtakes: int, **engine: int) -> tuple[Engine, RecordingPolicy]:
    scheduler = SchedulerConfig(policy="dlpm", max_overtakes=max_overtakes)
    settings = {"page_size": PAGE, "num_pages": 64, "max_batched_tokens": 256, **engine}
    built = build_engine(
        EngineConfig(scheduler=scheduler, **settings), model_dir, prompt_encoder(model_dir)
    ).engine
    built.policy = recorder = RecordingPolicy(built.policy)
    return built, recorder


def greedy(request_id: str, client: str, prompt: list[int], max_tokens: int = 4) -> Request:
    return Request(request_id, client, prompt, SamplingConfig(max_tokens=max_tokens, ignore_eos=True))


def hot_loop_with_one_cold(
    model_dir: Path, max_overtakes: int, steps: int
) -> tuple[Request, RecordingPolicy]:
    """Issue 12's case: one client keeps 4 requests on a cached prefix waiting, and has one cold request.

    ``max_running_requests=2``; the prefix is cached by a first request run alone.
    """
    engine, recorder = dlpm_engine(model_dir, max_overtakes, max_running_requests=2)
    warm = greedy("warm", "a", DOC + [1])
    engine.submit(warm)
    while engine.has_work():
        engine.step()
    cold = greedy("cold", "a", list(range(7000, 7030)))
    engine.submit(cold)
    hot = [greedy(f"hot{i}", "a", DOC + [5000 + i]) for i in range(4)]
    for request in hot:
        engine.submit(request)
    for step in range(steps):
        engine.step()
        for i, request in enumerate(hot):
            if request.is_finished:  # a closed loop: 4 hot requests outstanding at every step
                hot[i] = greedy(f"hot{step}-{i}", "a", DOC + [6000 + 7 * step + i])
                engine.submit(hot[i])
    return cold, recorder


def test_plain_lpm_order_inside_a_client_starves_its_cold_request(tiny_model_dir):
    # A K larger than any run: DLPM as it was before the bound. The measurement sees the starvation.
    cold, recorder = hot_loop_with_one_cold(tiny_model_dir, max_overtakes=10**9, steps=STEPS)

    assert cold.times_admitted == 0
    assert overtakes(recorder.log)[cold] > K


def test_a_cold_request_behind_its_own_clients_hot_ones_is_admitted_within_k_overtakes(tiny_model_dir):
    cold, recorder = hot_loop_with_one_cold(tiny_model_dir, max_overtakes=K, steps=STEPS)

    assert cold.times_admitted == 1
    assert overtakes(recorder.log)[cold] <= K


@dataclass(frozen=True)
class Job:
    client: str
    prompt: tuple[int, ...]
    max_tokens: int
    arrival_step: int


@st.composite
def workloads(draw) -> tuple[list[Job], int, int, int]:
    jobs = []
    for c in range(draw(st.integers(1, 3))):
        prefix = tuple(range(1000 + 100 * c, 1000 + 100 * c + draw(st.sampled_from([16, 32, 48]))))
        for j in range(draw(st.integers(2, 8))):
            hot = draw(st.booleans())
            suffix = tuple(draw(st.lists(st.integers(3, 999), min_size=1, max_size=12)))
            prompt = prefix + suffix if hot else tuple(range(5000 + 50 * j, 5000 + 50 * j + 8)) + suffix
            jobs.append(Job(f"client{c}", prompt, draw(st.integers(1, 6)), draw(st.integers(0, 15))))
    # 8 pages of 16 tokens is tight for three requests: the engine preempts, and requests re-join.
    return jobs, draw(st.sampled_from([0, 1, 3])), draw(st.integers(1, 3)), draw(st.sampled_from([8, 64]))


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(workload=workloads())
def test_no_request_is_overtaken_by_more_than_k_later_requests_of_its_client(tiny_model_dir, workload):
    jobs, max_overtakes, max_running, num_pages = workload
    engine, recorder = dlpm_engine(
        tiny_model_dir, max_overtakes, max_running_requests=max_running, num_pages=num_pages
    )
    requests = [greedy(f"r{i}", job.client, list(job.prompt), job.max_tokens) for i, job in enumerate(jobs)]
    step = 0
    while engine.has_work() or step <= max(job.arrival_step for job in jobs):
        for job, request in zip(jobs, requests):
            if job.arrival_step == step:
                engine.submit(request)
        engine.step()
        step += 1
        assert step < 3_000, "engine made no progress"

    assert all(r.is_finished for r in requests)
    assert max(overtakes(recorder.log).values()) <= max_overtakes
