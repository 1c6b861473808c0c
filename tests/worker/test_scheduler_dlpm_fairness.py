"""DLPM's fairness bound, measured through the real engine on a tiny random Llama.

The bound (derived in radixfair_engine.scheduler.dlpm): over any interval in
which clients A and B both have a request waiting, their weight-normalised
service differs by less than

    2·Q + D_A / weight_A + D_B / weight_B,   D_i = w_in · L_i + w_out · M_i · R_i

with L_i client i's longest prompt, M_i its largest max_tokens and R_i the
most of its requests that can run at once (min(max_running_requests, its
request count)). Service is what DLPM charges: ``w_in`` per computed prompt
token, ``cached_token_weight · w_in`` per cached one, ``w_out`` per output
token. The test computes it from the requests' own state after every engine
step (never from the policy's books), finds every run of steps in which a
pair is backlogged throughout, and takes the spread of the service
difference over the run: that is the largest gap over any interval inside it.

Observing at step ends is exact enough: within a step the engine only adds
to the waiting queue (arrivals, preemptions) before the policy admits, so two
consecutive observations that both see a client waiting mean it waited
throughout.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from itertools import combinations
from pathlib import Path

from hypothesis import HealthCheck, Phase, find, given, settings
from hypothesis import strategies as st
from worker.engine_harness import prompt_encoder

from radixfair_engine.config import EngineConfig, SchedulerConfig
from radixfair_engine.engine_builder import build_engine
from radixfair_engine.request import Request, SamplingConfig

W_IN, W_OUT = 1.0, 2.0
PAGE = 8
MAX_BATCHED_TOKENS = 64


@dataclass(frozen=True)
class Job:
    client: str
    weight: float
    prompt: tuple[int, ...]
    max_tokens: int
    arrival_step: int


@dataclass(frozen=True)
class Workload:
    jobs: tuple[Job, ...]
    quantum: float
    cached_token_weight: float
    max_running: int
    num_pages: int
    idle_deficit: str = "cap"
    max_overtakes: int = 8
    returning_turns: bool = False
    max_client_passes: int = 8


@dataclass(frozen=True)
class PairGap:
    clients: tuple[str, str]
    gap: float
    bound: float


def fairness_bound(workload: Workload, a: str, b: str) -> float:
    def debt_over_weight(client: str) -> float:
        jobs = [j for j in workload.jobs if j.client == client]
        longest = max(len(j.prompt) for j in jobs)
        most_output = max(j.max_tokens for j in jobs)
        running = min(workload.max_running, len(jobs))
        return (W_IN * longest + W_OUT * most_output * running) / jobs[0].weight

    return 2 * workload.quantum + debt_over_weight(a) + debt_over_weight(b)


def charged_service(request: Request, cached_token_weight: float) -> float:
    service = W_OUT * len(request.output_ids)
    if request.times_admitted:
        cached = request.num_cached_tokens
        service += W_IN * (len(request.prompt_ids) - cached) + cached_token_weight * W_IN * cached
    return service


def run_and_measure(workload: Workload, model_dir: Path, policy: str) -> list[PairGap]:
    """Runs the workload to the end; returns the largest backlogged gap of each client pair."""
    scheduler = SchedulerConfig(
        policy=policy,
        quantum=workload.quantum,
        input_token_weight=W_IN,
        output_token_weight=W_OUT,
        cached_token_weight=workload.cached_token_weight,
        idle_deficit=workload.idle_deficit,
        max_overtakes=workload.max_overtakes,
        returning_turns=workload.returning_turns,
        max_client_passes=workload.max_client_passes,
    )
    config = EngineConfig(
        page_size=PAGE,
        num_pages=workload.num_pages,
        max_running_requests=workload.max_running,
        max_batched_tokens=MAX_BATCHED_TOKENS,
        scheduler=scheduler,
    )
    engine = build_engine(config, model_dir, prompt_encoder(model_dir)).engine
    requests = [
        Request(
            f"r{i}",
            job.client,
            list(job.prompt),
            SamplingConfig(max_tokens=job.max_tokens, ignore_eos=True),
            weight=job.weight,
        )
        for i, job in enumerate(workload.jobs)
    ]
    weights = {job.client: job.weight for job in workload.jobs}
    observations: list[tuple[dict[str, float], set[str]]] = []
    step = 0
    while engine.has_work() or step <= max(j.arrival_step for j in workload.jobs):
        for job, request in zip(workload.jobs, requests):
            if job.arrival_step == step:
                engine.submit(request)
        engine.step()
        step += 1
        assert step < 5_000, "engine made no progress"
        normalised = dict.fromkeys(weights, 0.0)
        for request in requests:
            normalised[request.client_id] += (
                charged_service(request, workload.cached_token_weight) / weights[request.client_id]
            )
        observations.append((normalised, {r.client_id for r in engine.waiting}))
    assert all(r.is_finished and len(r.output_ids) == r.sampling.max_tokens for r in requests)
    return [
        PairGap((a, b), largest_backlogged_gap(observations, a, b), fairness_bound(workload, a, b))
        for a, b in combinations(sorted(weights), 2)
    ]


def largest_backlogged_gap(observations: list[tuple[dict[str, float], set[str]]], a: str, b: str) -> float:
    largest, run = 0.0, []
    for service, backlogged in [*observations, ({}, set())]:  # the sentinel closes the last run
        if a in backlogged and b in backlogged:
            run.append(service[a] - service[b])
            continue
        if run:
            largest = max(largest, max(run) - min(run))
        run = []
    return largest


@st.composite
def workloads(draw) -> Workload:
    shared_system = tuple(range(2000, 2000 + draw(st.sampled_from([0, 16]))))
    num_clients = draw(st.integers(2, 3))
    jobs = []
    for c in range(num_clients):
        client = f"client{c}"
        weight = draw(st.sampled_from([1.0, 2.0, 4.0]))
        own_prefix = draw(st.sampled_from([0, 8, 24, 40]))
        prefix = shared_system + tuple(range(3000 + 100 * c, 3000 + 100 * c + own_prefix))
        # The first two clients are backlogged from the start; a third may come later.
        late = c >= 2 and draw(st.booleans())
        for _ in range(draw(st.integers(3, 10))):
            suffix = draw(st.lists(st.integers(3, 999), min_size=1, max_size=16))
            arrival = draw(st.integers(0, 12)) if late else 0
            jobs.append(Job(client, weight, prefix + tuple(suffix), draw(st.integers(1, 6)), arrival))
    return Workload(
        # Arrival order interleaves clients at random (requests are created, and so arrive, in this order).
        jobs=tuple(draw(st.permutations(jobs))),
        quantum=draw(st.sampled_from([8.0, 24.0, 64.0])),
        cached_token_weight=draw(st.sampled_from([0.0, 0.5])),
        max_running=draw(st.integers(1, 3)),
        # 12 pages of 8 tokens is tight for three long requests: the engine preempts.
        num_pages=draw(st.sampled_from([12, 64])),
        # The property test below draws the rule (dlpm_rules); this draw keeps the search for an
        # unfair case drawing the workloads it always drew.
        idle_deficit=draw(st.sampled_from(["cap", "reset"])),
    )


# Drawn apart from ``workloads`` so that the search for an unfair case below sees the same
# workloads as before these rules existed: the late client goes idle between its arrivals, so
# every idle rule is exercised, the per-request wait rule picks which of a client's
# requests fills its place, and a returning client's turn (rule 7) reorders admissions.
dlpm_rules = st.fixed_dictionaries(
    {
        "idle_deficit": st.sampled_from(["lift", "cap", "reset"]),
        "max_overtakes": st.sampled_from([0, 2, 8]),
        "returning_turns": st.booleans(),
        "max_client_passes": st.sampled_from([0, 2, 8]),
    }
)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(workload=workloads(), rules=dlpm_rules)
def test_dlpm_service_gap_between_backlogged_clients_stays_within_the_bound(tiny_model_dir, workload, rules):
    for pair in run_and_measure(replace(workload, **rules), tiny_model_dir, "dlpm"):
        assert pair.gap <= pair.bound, pair


def three_clients_on_a_tight_cache() -> Workload:
    """A random search's counterexample: weights 4 / 2 / 1, a shared 16-token system prefix and a 40-token
    prefix per client, one running request, 12 pages (clients 1 and 2 lose their own prefix from the
    cache between their requests, so their requests wait on each other's prefill: in-batch holds).
    A held client with no credit used to miss the refills the others got while it was parked: clients
    1 and 2 then differed by 215.5 weighted tokens against a bound of 174 (64 once refills reach it)."""
    system = tuple(range(2000, 2016))
    suffixes = {
        "client0": [
            (462, 3, 512, 151, 468, 406, 814),
            (392, 638, 929),
            (753, 642, 56, 405, 285, 268, 393, 492, 618, 185),
            (309, 9, 567, 343),
            (820,),
            (791,),
            (470, 343, 225, 4, 260, 452, 479, 274, 384),
            (41, 362),
        ],
        "client1": [
            (236, 46, 581, 391, 67, 523),
            (530, 926, 234, 743, 128),
            (103, 40, 517, 5, 809, 108, 57, 74, 204, 393, 168, 76, 930, 424, 177, 597),
            (15,),
            (238, 448, 159, 521, 507, 226, 350, 234, 124, 362),
            (438, 782, 607, 421, 999, 228, 308, 7, 821, 271, 196, 506, 517, 764, 189),
            (266, 8, 273),
        ],
        "client2": [
            (440, 233, 100, 190, 267, 221, 159, 320, 589),
            (187, 551, 501, 417, 48, 338, 101, 159),
            (379, 90, 129, 89, 192, 336, 3, 851),
            (41, 252, 216, 678, 304, 225, 177, 26, 452, 120, 496, 511, 114, 47),
            (852, 3, 220, 262, 198, 982, 805, 658, 474, 165, 719, 312, 491, 113, 104),
            (418, 568, 512, 761, 797, 153, 18, 59, 4, 816, 43, 184, 485, 291, 400, 443),
            (397, 475),
            (386, 884, 155, 3),
        ],
    }
    max_tokens = {
        "client0": (5, 2, 6, 1, 2, 1, 5, 4),
        "client1": (6, 3, 5, 1, 2, 2, 2),
        "client2": (1, 6, 3, 4, 1, 6, 2, 1),
    }
    weights = {"client0": 4.0, "client1": 2.0, "client2": 1.0}
    jobs = []
    for c, client in enumerate(suffixes):
        prefix = system + tuple(range(3000 + 100 * c, 3040 + 100 * c))
        for suffix, tokens in zip(suffixes[client], max_tokens[client], strict=True):
            jobs.append(Job(client, weights[client], prefix + suffix, tokens, 0))
    return Workload(
        jobs=tuple(jobs),
        quantum=24.0,
        cached_token_weight=0.0,
        max_running=1,
        num_pages=12,
        idle_deficit="lift",
        max_overtakes=0,
    )


def test_a_client_parked_by_in_batch_holds_keeps_its_refills(tiny_model_dir):
    for pair in run_and_measure(three_clients_on_a_tight_cache(), tiny_model_dir, "dlpm"):
        assert pair.gap <= pair.bound, pair


def hot_prefix_flood() -> Workload:
    """One client's requests share a long prefix; another's share nothing.

    The hot client's first request runs alone first, so its prefix is cached
    by the time the rest arrive. The cold requests are older than the hot
    ones (arrival order would serve them first), but LPM prefers every hot one.
    """
    doc = tuple(range(3000, 3048))
    hot = [
        Job("hot", 1.0, doc + (5000 + i, 6000 + i, 7000 + i, 8000 + i), 8, 0 if i == 0 else 1)
        for i in range(16)
    ]
    cold = [Job("cold", 1.0, tuple(range(100 * i + 10, 100 * i + 30)), 8, 1) for i in range(3)]
    jobs = (hot[0], *cold, *hot[1:])
    return Workload(jobs=jobs, quantum=8.0, cached_token_weight=0.0, max_running=2, num_pages=64)


def test_the_measurement_catches_lpm_starving_a_client(tiny_model_dir):
    (pair,) = run_and_measure(hot_prefix_flood(), tiny_model_dir, "lpm")

    assert pair.gap > pair.bound, pair


def test_dlpm_keeps_the_hot_prefix_flood_within_the_bound(tiny_model_dir):
    (pair,) = run_and_measure(hot_prefix_flood(), tiny_model_dir, "dlpm")

    assert 0 < pair.gap <= pair.bound, pair


def test_the_random_workloads_expose_an_unfair_policy(tiny_model_dir):
    # The property test is only as good as its workloads: the same strategy
    # must produce cases where a policy that ignores fairness breaks the bound.
    budget = settings(
        max_examples=150, derandomize=True, database=None, phases=[Phase.generate], deadline=None
    )

    def lpm_breaks_the_bound(workload: Workload) -> bool:
        return any(p.gap > p.bound for p in run_and_measure(workload, tiny_model_dir, "lpm"))

    find(workloads(), lpm_breaks_the_bound, settings=budget)


def two_clients_parked_with_credit() -> Workload:
    """A random search's counterexample (2026-12-01): weights 2 / 1, a 16-token system prefix and a
    40-token prefix per client, one running request, 12 pages. The weight-2 client's requests were
    parked behind its own running leader's prefix while it had credit; the pass then admitted
    nobody, so the spent weight-1 client was refilled until it had credit too, at every such step,
    and the two were served one request each in turn: 174.5 weighted tokens apart against a bound
    of 124.5."""
    system = tuple(range(2000, 2016))
    jobs = []
    for client, weight, own, suffixes in (
        (
            "client0",
            2.0,
            3000,
            [(1, 1), (3, 3), (1, 3), (1, 3), (4, 1), (1, 3), (1, 3), (3, 3), (4, 3), (13, 1)],
        ),
        ("client1", 1.0, 3100, [(1, 1), (1, 3), (6, 3), (9, 3), (9, 3), (3, 3), (6, 3), (2, 3), (6, 3)]),
    ):
        for length, max_tokens in suffixes:
            jobs.append(
                Job(client, weight, system + tuple(range(own, own + 40)) + (3,) * length, max_tokens, 0)
            )
    return Workload(tuple(jobs), quantum=8.0, cached_token_weight=0.0, max_running=1, num_pages=12)


def test_a_client_parked_with_credit_stops_the_refills_until_it_is_served(tiny_model_dir):
    for rules in ({"idle_deficit": "lift"}, {"idle_deficit": "cap"}, {"idle_deficit": "reset"}):
        for pair in run_and_measure(
            replace(two_clients_parked_with_credit(), **rules), tiny_model_dir, "dlpm"
        ):
            assert pair.gap <= pair.bound, (rules, pair)
