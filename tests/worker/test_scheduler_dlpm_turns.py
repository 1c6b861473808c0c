"""DLPM's rule 7: a client back with credit is passed by at most P + (n - 1) admissions of others.

The bound (derived in radixfair_engine.scheduler.dlpm, (g)): with rule 7 on
(``returning_turns``), ungated (``turns_only_when_behind=False``; the gated form is
tested in test_scheduler_dlpm_turns_behind.py), a client that has a request again after being idle,
and has credit, has one of its
requests admitted before more than ``max_client_passes`` (P) + (n - 1)
requests of other clients are admitted, n being the number of clients;
periods in which its request is held for a leader's prefix (rule 6) are not
counted, so these engines hold nothing (``in_batch_prefix_pages=0``). VTC
lifts such a client to the smallest counter, so it goes first there: DLPM's
wait is VTC's plus at most P + (n - 1) admissions.

Runs go through the real engine on a tiny random Llama; the policy is
wrapped in a recorder that logs joins, each step's deficits before it picks,
and admissions, in the order they happen.
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
DOC = list(range(3000, 3048))  # 3 pages: the busy client's cached prefix
P = 8  # a locality allowance (the default is 0): eight cached admissions may pass a returning client


class OrderedRecordingPolicy(RecordingPolicy):
    """RecordingPolicy that logs each ("admit", request) as the budget accepts it, and ("refused", request)
    for each budget refusal, in the order they happen within a pick."""

    def pick_next(self, waiting, cache, budget):
        deficits = self.inner.fairness_state().deficits
        self.log.append(("pick", {r.client_id: deficits.get(r.client_id, 1.0) for r in waiting}))
        return self.inner.pick_next(waiting, cache, _LoggedBudget(budget, self.log))


class _LoggedBudget:
    def __init__(self, budget, log: list[tuple[str, object]]) -> None:
        self._budget = budget
        self._log = log

    def holds(self, request: Request) -> bool:
        return self._budget.holds(request)

    def try_admit(self, request: Request) -> bool:
        admitted = self._budget.try_admit(request)
        self._log.append(("admit" if admitted else "refused", request))
        return admitted


def passes_before_return_admitted(log: list[tuple[str, object]]) -> dict[str, int]:
    """Per client, the most admissions of other clients' requests between a step that began with the
    client back (a request again after being idle: nothing waiting, nothing running) and with credit,
    and its next admission. A step that begins with it spent ends the count; the next one with credit
    starts it again. Admissions after a budget refusal in the same step are a turn's wait for room
    (bounded in time, (g') in scheduler.dlpm), not passes: they are not counted."""
    waiting: dict[str, set[Request]] = {}
    running: dict[str, set[Request]] = {}
    back: set[str] = set()  # returned and not yet admitted
    counting: dict[str, int] = {}
    worst: dict[str, int] = {}
    after_refusal = False
    for kind, item in log:
        if kind == "refused":
            after_refusal = True
        elif kind == "join":
            client = item.client_id
            running.get(client, set()).discard(item)  # a preempted request joins again
            if not waiting.get(client) and not running.get(client):
                back.add(client)
            waiting.setdefault(client, set()).add(item)
        elif kind == "pick":
            after_refusal = False
            for client in back:
                if item.get(client, 0.0) > 0:
                    counting.setdefault(client, 0)
                else:
                    counting.pop(client, None)
        elif kind == "admit":
            client = item.client_id
            waiting[client].discard(item)
            running.setdefault(client, set()).add(item)
            for other in counting:
                if other != client and not after_refusal:
                    counting[other] += 1
            if client in counting:
                worst[client] = max(worst.get(client, 0), counting.pop(client))
            back.discard(client)
        else:
            waiting.get(item.client_id, set()).discard(item)
            running.get(item.client_id, set()).discard(item)
    for client, count in counting.items():  # still waiting at the end
        worst[client] = max(worst.get(client, 0), count)
    return worst


def engine_with(
    model_dir: Path, policy: str, turns: bool = True, behind_only: bool = False, **engine: int
) -> tuple[Engine, RecordingPolicy]:
    """The ungated form by default (a turn for every client back from idle): the bound tested here."""
    scheduler = SchedulerConfig(
        policy=policy,
        quantum=4096.0,
        returning_turns=turns,
        max_client_passes=P,
        turns_only_when_behind=behind_only,
        in_batch_prefix_pages=0,
    )
    settings = {"page_size": PAGE, "num_pages": 64, "max_batched_tokens": 256, **engine}
    built = build_engine(EngineConfig(scheduler=scheduler, **settings), model_dir).engine
    built.policy = recorder = RecordingPolicy(built.policy)
    return built, recorder


def greedy(
    request_id: str, client: str, prompt: list[int], max_tokens: int = 4, weight: float = 1.0
) -> Request:
    return Request(
        request_id, client, prompt, SamplingConfig(max_tokens=max_tokens, ignore_eos=True), weight=weight
    )


def busy_loop_and_a_return(
    model_dir: Path, policy: str, turns: bool = True, behind_only: bool = False
) -> RecordingPolicy:
    """Client "busy" keeps 4 requests on its cached document waiting at every step; client "back"
    (weight 2) sends one request, idles, and returns with a cold one at step 10. A quantum of 4,096
    lasts the busy client ~70 cached requests: DLPM's prefix order alone makes "back" wait for that."""
    engine, recorder = engine_with(model_dir, policy, turns, behind_only, max_running_requests=2)
    warm = greedy("warm", "busy", DOC + [1])
    engine.submit(warm)
    engine.submit(greedy("first", "back", list(range(7000, 7020)), weight=2.0))
    while engine.has_work():
        engine.step()
    busy = [greedy(f"busy{i}", "busy", DOC + [5000 + i]) for i in range(4)]
    for request in busy:
        engine.submit(request)
    cold = greedy("cold", "back", list(range(8000, 8030)), weight=2.0)
    for step in range(60):
        if step == 10:
            engine.submit(cold)
        engine.step()
        for i, request in enumerate(busy):
            if request.is_finished:  # a closed loop: 4 busy requests outstanding at every step
                busy[i] = greedy(f"busy{step}-{i}", "busy", DOC + [6000 + 7 * step + i])
                engine.submit(busy[i])
    assert cold.times_admitted == 1 or not turns or behind_only  # gated, "back" is level: no turn
    return recorder


def test_prefix_order_alone_keeps_a_returning_client_behind_every_cached_request(tiny_model_dir):
    recorder = busy_loop_and_a_return(tiny_model_dir, "dlpm", turns=False)

    assert passes_before_return_admitted(recorder.log)["back"] > P + 1


def test_a_returning_client_is_passed_at_most_p_plus_n_minus_1_times(tiny_model_dir):
    recorder = busy_loop_and_a_return(tiny_model_dir, "dlpm")

    assert passes_before_return_admitted(recorder.log)["back"] <= P + 1


def test_a_returning_client_waits_at_most_p_plus_n_minus_1_admissions_longer_than_under_vtc(tiny_model_dir):
    under_vtc = passes_before_return_admitted(busy_loop_and_a_return(tiny_model_dir, "vtc").log)["back"]
    under_dlpm = passes_before_return_admitted(busy_loop_and_a_return(tiny_model_dir, "dlpm").log)["back"]

    assert under_dlpm <= under_vtc + P + 1


@dataclass(frozen=True)
class Job:
    client: str
    weight: float
    prompt: tuple[int, ...]
    max_tokens: int
    arrival_step: int


@st.composite
def workloads(draw) -> tuple[list[Job], int, int, int]:
    """2-4 clients; each sends bursts (requests on its own prefix or cold ones) with idle gaps between."""
    jobs = []
    for c in range(draw(st.integers(2, 4))):
        prefix = tuple(range(1000 + 100 * c, 1000 + 100 * c + draw(st.sampled_from([16, 32, 48]))))
        weight = draw(st.sampled_from([1.0, 2.0]))
        step = draw(st.integers(0, 6))
        for _ in range(draw(st.integers(1, 4))):  # bursts
            for j in range(draw(st.integers(1, 5))):
                hot = draw(st.booleans())
                suffix = tuple(draw(st.lists(st.integers(3, 999), min_size=1, max_size=12)))
                cold = tuple(range(5000 + 50 * j, 5008 + 50 * j))
                prompt = (prefix if hot else cold) + suffix
                jobs.append(Job(f"client{c}", weight, prompt, draw(st.integers(1, 6)), step))
            step += draw(st.integers(1, 20))
    # 8 pages of 16 tokens is tight for three requests: the engine preempts, and requests re-join.
    limits = (draw(st.sampled_from([0, 2, 8])), draw(st.integers(1, 3)), draw(st.sampled_from([8, 64])))
    return jobs, *limits


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(workload=workloads(), quantum=st.sampled_from([16.0, 64.0, 1024.0]))
def test_no_returning_client_with_credit_is_passed_more_than_p_plus_n_minus_1_times(
    tiny_model_dir, workload, quantum
):
    jobs, max_client_passes = workload[0], workload[1]
    recorder, requests = run_jobs(tiny_model_dir, workload, quantum, OrderedRecordingPolicy, behind=False)

    clients = {job.client for job in jobs}
    assert all(r.is_finished for r in requests)
    assert (
        max(passes_before_return_admitted(recorder.log).values(), default=0)
        <= max_client_passes + len(clients) - 1
    )


def run_jobs(model_dir, workload, quantum, recorder_class, *, behind: bool):
    """Runs a drawn ``workload`` (jobs, P, max running, pages; each job submitted at its arrival step) on
    a DLPM engine with rule 7 on (gated by ``behind``: ``turns_only_when_behind``), its policy wrapped in
    ``recorder_class``, to the end; returns the recorder and the requests."""
    jobs, max_client_passes, max_running, num_pages = workload
    scheduler = SchedulerConfig(
        policy="dlpm",
        quantum=quantum,
        returning_turns=True,
        max_client_passes=max_client_passes,
        turns_only_when_behind=behind,
        in_batch_prefix_pages=0,
    )
    config = EngineConfig(
        page_size=PAGE,
        num_pages=num_pages,
        max_running_requests=max_running,
        max_batched_tokens=256,
        scheduler=scheduler,
    )
    engine = build_engine(config, model_dir, prompt_encoder(model_dir)).engine
    engine.policy = recorder = recorder_class(engine.policy)
    requests = [
        greedy(f"r{i}", job.client, list(job.prompt), job.max_tokens, job.weight)
        for i, job in enumerate(jobs)
    ]
    step = 0
    while engine.has_work() or step <= max(job.arrival_step for job in jobs):
        for job, request in zip(jobs, requests):
            if job.arrival_step == step:
                engine.submit(request)
        engine.step()
        step += 1
        assert step < 3_000, "engine made no progress"
    return recorder, requests
