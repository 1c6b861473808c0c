"""What DLPM gives a client that has a waiting request again: VTC's lift in deficit terms, for debt only.

The returning-client cases run the real policies (DLPM under each idle rule,
and VTC) in a small step loop against a real radix cache: each step admits
into the free running slots, and every running request generates one token.
The loop's step count is the clock.
"""

from __future__ import annotations

from dataclasses import dataclass

from scheduler_harness import CountingBudget, cache_holding, finish, request

from radixfair_engine.config import SchedulerConfig
from radixfair_engine.scheduler.dlpm import DLPMPolicy
from radixfair_engine.scheduler.registry import build_policy

Q = 64.0
W_IN, W_OUT = 1.0, 2.0
PROMPT = 8
SMALL = 4  # max_tokens of the backlogged clients' requests
U = W_IN * PROMPT + W_OUT * SMALL  # the cost of one such request


def config(policy: str = "dlpm", idle: str = "lift") -> SchedulerConfig:
    return SchedulerConfig(
        policy=policy, quantum=Q, input_token_weight=W_IN, output_token_weight=W_OUT, idle_deficit=idle
    )


@dataclass
class Return:
    steps_waited: int
    others_admitted_cost: float  # cost of the other clients' requests admitted while it waited


def returning_client(policy_name: str, idle: str, return_step: int, slots: int = 2) -> Return:
    """Clients a and b (weight 1) always have 3 requests waiting. Client c (weight 2) runs one long
    request from step 0 (300 tokens: 608 of service, many quanta), has nothing waiting after it,
    and sends 3 small requests at ``return_step``.
    """
    policy = build_policy(config(policy_name, idle))
    cache = cache_holding()
    waiting, running, made = [], [], 0

    def send(client: str, weight: float, max_tokens: int, step: int) -> None:
        nonlocal made
        made += 1
        r = request(f"{client}{made}", client, [made, *range(1, PROMPT)], float(step), weight, max_tokens)
        policy.on_arrival(r)
        waiting.append(r)

    others_cost = 0.0
    for step in range(return_step + 400):
        for client in ("a", "b"):
            while sum(r.client_id == client for r in waiting) < 3:
                send(client, 1.0, SMALL, step)
        if step == 0:
            send("c", 2.0, 300, step)
        if step == return_step:
            for _ in range(3):
                send("c", 2.0, SMALL, step)
        admitted = policy.pick_next(list(waiting), cache, CountingBudget(cache, slots - len(running)))
        for r in admitted:
            waiting.remove(r)
            running.append(r)
        if step >= return_step:
            if any(r.client_id == "c" for r in admitted):
                return Return(step - return_step, others_cost)
            others_cost += sum(W_IN * PROMPT + W_OUT * r.sampling.max_tokens for r in admitted)
        for r in list(running):
            r.output_ids.append(1)
            policy.on_output_tokens({(r.client_id, r.weight): 1})
            if len(r.output_ids) == r.sampling.max_tokens:
                running.remove(r)
                finish(r)
                policy.on_finished(r)
    raise AssertionError("the returning client was never admitted")


# The stated bound. With lift, a client in debt that has a waiting request again is credited the
# refills it missed, up to the credit of the most underserved backlogged client; when its debt is older
# than the refills it missed, it gets some: then no refill happens until it is admitted, so each other
# backlogged client j is admitted at most its credit (<= Q·w_j) plus one request's overrun (U) while it waits.
LIFT_BOUND = 2 * (Q * 1.0 + U)
RETURN_STEPS = (330, 345, 360, 375)  # after c's long request ended (about step 300), at several phases


def test_a_returning_client_waits_within_one_quantum_of_the_others_under_lift():
    for step in RETURN_STEPS:
        lift = returning_client("dlpm", "lift", step)
        vtc = returning_client("vtc", "lift", step)

        assert lift.others_admitted_cost <= LIFT_BOUND, (step, lift)
        # VTC serves it before anyone else (one request may be admitted in the same step).
        assert vtc.others_admitted_cost <= U, (step, vtc)
        # In steps: the others' requests it may wait for, LIFT_BOUND / U of them, hold the 2 slots
        # for SMALL steps each, and one more round of the slots may be in flight when it returns.
        assert lift.steps_waited <= vtc.steps_waited + (LIFT_BOUND / U / 2 + 1) * SMALL, (step, lift, vtc)


def test_under_cap_a_client_pays_for_refills_it_missed_while_its_request_ran():
    # The measurement above can fail: "cap" keeps the debt c ran up while it had nothing waiting
    # (refills reach waiting clients only), so c waits several rounds after it returns.
    for step in RETURN_STEPS:
        assert returning_client("dlpm", "cap", step).others_admitted_cost > 2 * LIFT_BOUND


def spend(policy: DLPMPolicy, client: str, weight: float, tokens: int, arrival: float) -> None:
    """One request of ``tokens`` prompt tokens arrives and is admitted; it stays running."""
    cache = cache_holding()
    r = request(f"{client}{arrival}", client, list(range(1, tokens + 1)), arrival, weight)
    policy.on_arrival(r)
    assert policy.pick_next([r], cache, CountingBudget(cache, 1)) == [r]


def test_lift_never_takes_away_the_credit_a_client_kept_when_it_went_idle():
    # An earlier lift also lowered kept credit to the most underserved backlogged client's. Under D2LPM a
    # light client's queue empties after nearly every admission, so that cut its credit on every return
    # (tests/bench/test_simulator_dlpm_idle.py shows what it cost).
    policy = DLPMPolicy(config())
    cache = cache_holding()
    first = request("c0", "c", list(range(1, 11)), 0.0, weight=2.0)
    policy.on_arrival(first)
    policy.pick_next([first], cache, CountingBudget(cache, 1))  # c: 2·64 - 10 = 118
    finish(first)
    policy.on_finished(first)  # c idle, under its cap of 128
    spend(policy, "a", 1.0, 50, 1.0)  # a: 64 - 50 = 14
    policy.on_arrival(request("a1", "a", [9, 9, 9], 2.0))  # a backlogged, 14 per unit of weight

    policy.on_arrival(request("c1", "c", [7, 7, 7], 3.0, weight=2.0))

    assert policy.deficits()["c"] == 118  # what "cap" keeps; idling added nothing to it


def test_lift_credits_missed_refills_only_up_to_the_most_underserved_backlogged_client():
    policy = DLPMPolicy(config())
    cache = cache_holding()
    spend(policy, "c", 1.0, 200, 0.0)  # c: 64 - 200 = -136, running, nothing waiting
    for i in range(3):  # a and b: 64 - 80 = -16, then a refill and 80 more each time: -48
        pair = [request(f"{client}{i}", client, list(range(1, 81)), 1.0 + i) for client in ("a", "b")]
        for r in pair:
            policy.on_arrival(r)
        policy.pick_next(pair, cache, CountingBudget(cache, 2))
    spend(policy, "a", 1.0, 10, 5.0)  # a third refill: a at 16, then 16 - 10 = 6
    policy.on_arrival(request("a9", "a", [9, 9], 6.0))  # a backlogged with 6; b has nothing waiting

    policy.on_arrival(request("c1", "c", [7, 7], 10.0))

    # c missed 3 refills: -136 + 3·64 = 56 had it waited, more than a, the most underserved backlogged
    # client, has. What the lift adds stops level with a.
    assert policy.refill_count == 3
    assert policy.deficits()["c"] == 6


def test_lift_credits_the_refills_a_client_missed_while_it_had_nothing_waiting():
    deficits = {}
    for rule in ("lift", "cap"):
        policy = DLPMPolicy(config(idle=rule))
        cache = cache_holding()
        spend(policy, "c", 1.0, 200, 0.0)  # c: 64 - 200 = -136, running, nothing waiting
        for i in range(3):  # a and b: 64 - 80 = -16, then two refills and -16 each time
            pair = [request(f"{client}{i}", client, list(range(1, 81)), 1.0 + i) for client in ("a", "b")]
            for r in pair:
                policy.on_arrival(r)
            policy.pick_next(pair, cache, CountingBudget(cache, 2))
        assert policy.refill_count == 2

        policy.on_arrival(request("c1", "c", [7, 7], 10.0))
        deficits[rule] = policy.deficits()["c"]

    # Each missed refill is credited while q <= 0, as it would have been had c waited: -136 + 2·64.
    # "cap" keeps the whole debt run up while c's request ran at its fair rate.
    assert deficits == {"lift": -136 + 2 * Q, "cap": -136}


def test_a_new_client_starts_with_one_quantum_under_every_rule():
    for rule in ("lift", "cap", "reset"):
        policy = DLPMPolicy(config(idle=rule))
        spend(policy, "a", 1.0, 40, 0.0)  # a: 64 - 40 = 24
        policy.on_arrival(request("a1", "a", [9, 9], 1.0))

        policy.on_arrival(request("n0", "new", [8, 8], 2.0, weight=3.0))

        assert policy.deficits()["new"] == 3.0 * Q, rule  # one quantum: nothing banked, nothing taken
