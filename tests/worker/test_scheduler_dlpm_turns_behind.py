"""DLPM's rule 7, gated: a client that returns behind is passed by at most P + (n - 1) admissions of others.

The gate (``turns_only_when_behind``, radixfair_engine.scheduler.dlpm rule 7):
when a client becomes backlogged (a request arrives with none of its own
waiting), its VTC counter (cumulative charge over its weight) is lifted to
the smallest counter among the other backlogged clients, or, with none, to
the counter of the client charged last; it takes a turn only if that lifted
counter is below the mean of the other backlogged clients'. The bound ((g) in
scheduler.dlpm): such a client, while it has credit and a waiting request,
has one of its requests admitted before more than P + (n - 1) requests of
other clients are admitted.

The test replays VTC's counters itself, from the service the policy's meter
reports at each arrival (charges, as ``cached_token_weight`` is 0) and the
order of charges in the log, so which returns count as behind is decided here,
not read from the policy. Runs go through the real engine on a tiny random
Llama.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from worker.policy_recorder import RecordingPolicy
from worker.test_scheduler_dlpm_turns import (
    DOC,
    Job,
    OrderedRecordingPolicy,
    P,
    busy_loop_and_a_return,
    engine_with,
    greedy,
    passes_before_return_admitted,
    run_jobs,
    workloads,
)

from radixfair_engine.request import Request

# Counters are sums of floats in two orders (the policy's increments, this test's totals): a return this
# close to the mean is left out of the check rather than decided by rounding.
TIE = 1e-6


class ServiceRecordingPolicy(OrderedRecordingPolicy):
    """OrderedRecordingPolicy that also logs ("service", {client: raw service}) just before each join, and
    ("output", client id) for each charge of generated tokens."""

    def on_arrival(self, request: Request) -> None:
        self.log.append(("service", self.inner.client_service()))
        super().on_arrival(request)

    def on_output_tokens(self, counts) -> None:  # noqa: ANN001 - OutputCounts
        for client, _ in counts:
            self.log.append(("output", client))
        self.inner.on_output_tokens(counts)


def passes_after_returns_behind(log: list[tuple[str, object]], weights: dict[str, float]) -> dict[str, int]:
    """Per client, the most admissions of other clients between a step that began with it back behind
    (by VTC's lifted counters, replayed here) and with credit, and its next admission."""
    waiting: dict[str, set[Request]] = {}
    lift: dict[str, float] = {}
    service: dict[str, float] = {}
    last_charged: str | None = None
    back: set[str] = set()
    counting: dict[str, int] = {}
    worst: dict[str, int] = {}
    after_refusal = False  # admissions after a refusal in a step are a wait for room, not passes

    def counter(client: str) -> float:
        return service.get(client, 0.0) / weights[client] + lift.get(client, 0.0)

    for kind, item in log:
        if kind == "service":
            service = item
        elif kind == "join":
            client = item.client_id
            if not waiting.get(client):
                others = [counter(c) for c, queued in waiting.items() if queued and c != client]
                floor = min(others) if others else (counter(last_charged) if last_charged else 0.0)
                lift[client] = lift.get(client, 0.0) + max(0.0, floor - counter(client))
                if others and counter(client) < sum(others) / len(others) - TIE:
                    back.add(client)
            waiting.setdefault(client, set()).add(item)
        elif kind == "refused":
            after_refusal = True
        elif kind == "pick":
            after_refusal = False
            for client in back:
                if item.get(client, 0.0) > 0:
                    counting.setdefault(client, 0)
                else:
                    counting.pop(client, None)
        elif kind == "admit":
            client = last_charged = item.client_id
            waiting[client].discard(item)
            for other in counting:
                if other != client and not after_refusal:
                    counting[other] += 1
            if client in counting:
                worst[client] = max(worst.get(client, 0), counting.pop(client))
            back.discard(client)
        elif kind == "output":
            last_charged = item
        else:
            waiting.get(item.client_id, set()).discard(item)
    for client, count in counting.items():  # still waiting at the end
        worst[client] = max(worst.get(client, 0), count)
    return worst


@st.composite
def busy_and_returning(draw) -> tuple[list[Job], int, int, int]:
    """1-2 busy clients with a deep burst on their own prefix (hot after its first request), and 1-2
    clients that send a short request, idle, and come back with bursts, cold or on their prefix: the
    case where prefix order alone passes a returning client many times."""
    jobs = []
    for c in range(draw(st.integers(1, 2))):
        prefix = tuple(range(1000 + 100 * c, 1048 + 100 * c))
        for j in range(draw(st.integers(6, 14))):
            suffix = (3 + j, 3 + c)
            jobs.append(
                Job(f"busy{c}", 1.0, prefix + suffix, draw(st.integers(1, 4)), draw(st.integers(0, 3)))
            )
    for c in range(draw(st.integers(1, 2))):
        weight = draw(st.sampled_from([1.0, 2.0]))
        prefix = tuple(range(4000 + 100 * c, 4032 + 100 * c))
        jobs.append(Job(f"back{c}", weight, prefix + (7,), draw(st.integers(1, 4)), 0))
        step = draw(st.integers(4, 12))
        for _ in range(draw(st.integers(1, 3))):
            for j in range(draw(st.integers(1, 3))):
                cold = tuple(range(6000 + 40 * j + 400 * c, 6020 + 40 * j + 400 * c))
                prompt = (prefix if draw(st.booleans()) else cold) + (9, j)
                jobs.append(Job(f"back{c}", weight, prompt, draw(st.integers(1, 4)), step))
            step += draw(st.integers(5, 20))
    limits = (draw(st.sampled_from([0, 2])), draw(st.integers(1, 3)), draw(st.sampled_from([16, 64])))
    return jobs, *limits


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(workload=st.one_of(workloads(), busy_and_returning()), quantum=st.sampled_from([16.0, 64.0, 1024.0]))
def test_no_client_returning_behind_with_credit_is_passed_more_than_p_plus_n_minus_1_times(
    tiny_model_dir, workload, quantum
):
    jobs, max_client_passes = workload[0], workload[1]
    recorder, requests = run_jobs(tiny_model_dir, workload, quantum, ServiceRecordingPolicy, behind=True)

    weights = {job.client: job.weight for job in jobs}
    assert all(r.is_finished for r in requests)
    assert (
        max(passes_after_returns_behind(recorder.log, weights).values(), default=0)
        <= max_client_passes + len(weights) - 1
    )


def three_clients_and_a_return(model_dir, turns: bool = True) -> RecordingPolicy:
    """Gated. "busy" keeps 4 cheap cached requests waiting at every step; "heavy", served one long cold
    prompt, waits with 2 cold ones behind them (its counter stays put); "back" (weight 2, one short
    request) returns cold at step 10, lifted to heavy's counter, below the mean of busy's and heavy's."""
    engine, recorder = engine_with(model_dir, "dlpm", turns, behind_only=True, max_running_requests=2)
    engine.submit(greedy("warm", "busy", DOC + [1]))
    engine.submit(greedy("first", "back", list(range(7000, 7020)), weight=2.0))
    while engine.has_work():
        engine.step()
    engine.submit(greedy("long", "heavy", list(range(9000, 9200))))
    while engine.has_work():
        engine.step()
    busy = [greedy(f"busy{i}", "busy", DOC + [5000 + i]) for i in range(4)]
    for request in busy:
        engine.submit(request)
    for i in range(2):
        engine.submit(greedy(f"heavy{i}", "heavy", list(range(9500 + 100 * i, 9540 + 100 * i))))
    for step in range(60):
        if step == 10:
            engine.submit(greedy("cold", "back", list(range(8000, 8030)), weight=2.0))
        engine.step()
        for i, request in enumerate(busy):
            if request.is_finished:  # a closed loop: 4 busy requests outstanding at every step
                busy[i] = greedy(f"busy{step}-{i}", "busy", DOC + [6000 + 7 * step + i])
                engine.submit(busy[i])
    return recorder


def test_a_client_returning_behind_the_backlogged_takes_its_turn(tiny_model_dir):
    gated = passes_before_return_admitted(three_clients_and_a_return(tiny_model_dir).log)["back"]
    prefix_order = passes_before_return_admitted(three_clients_and_a_return(tiny_model_dir, False).log)

    assert gated <= P + 2
    assert prefix_order["back"] > P + 2


def test_a_client_returning_level_with_the_backlogged_takes_no_turn(tiny_model_dir):
    """One other client backlogged: the lift puts "back" at its counter, the mean, so it is not behind;
    the ungated form gives it a turn."""
    gated = passes_before_return_admitted(
        busy_loop_and_a_return(tiny_model_dir, "dlpm", behind_only=True).log
    )
    ungated = passes_before_return_admitted(busy_loop_and_a_return(tiny_model_dir, "dlpm").log)

    assert ungated["back"] <= P + 1
    assert gated["back"] > P + 1
