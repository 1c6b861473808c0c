"""The admission forecast runs the ledger's own rule: on the deficits one router reads back, it names
the worker the admission then chooses, refills and refunds included (admission_forecast.py)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from radixfair_router.admission_forecast import AdmissionForecast
from radixfair_router.ledger_state import AdmitCandidate, Charge, LocalLedgerStore

WORKERS = ("w1", "w2", "w3")
QUANTUM = 50.0

# Costs and charges on the scale of the quantum, so deficits cross zero and refills happen often.
candidate = st.tuples(
    st.sampled_from(WORKERS), st.booleans(), st.sampled_from((0.0, 10.0, 35.0, 60.0, 120.0))
)
admit_op = st.tuples(
    st.just("admit"),
    st.sampled_from(("alice", "bob")),
    st.sampled_from((0.5, 1.0, 2.0)),
    st.sampled_from(("d2lpm", "fixed")),
    st.lists(candidate, min_size=1, max_size=3, unique_by=lambda c: c[0]),
    st.integers(0, 2),  # the fallback: one of the candidates (the least loaded healthy worker)
)
# Output charges and settlements, refunds (negative service) included.
charge_op = st.tuples(
    st.just("charge"),
    st.sampled_from(("alice", "bob")),
    st.sampled_from((0.5, 1.0, 2.0)),
    st.sampled_from(WORKERS),
    st.sampled_from((-150.0, -20.0, 5.0, 30.0, 60.0, 150.0)),
)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.one_of(admit_op, charge_op), min_size=1, max_size=40))
def test_a_forecast_fed_every_reply_names_the_worker_the_admission_chooses(ops):
    # One router and nobody else on the ledger: every reply reaches the forecast, so it is exact.
    store = LocalLedgerStore(QUANTUM)
    forecast = AdmissionForecast(QUANTUM)
    for op in ops:
        if op[0] == "admit":
            _, client, weight, mode, raw, pick = op
            candidates = [AdmitCandidate(*c) for c in raw]
            fallback = candidates[pick % len(candidates)].worker_id
            if mode == "fixed":
                candidates, fallback = candidates[:1], candidates[0].worker_id
            expected = forecast.choose(client, weight, mode, candidates, fallback)
            admission = store.admit(client, weight, mode, candidates, fallback)
            # None: no firm forecast (near a refill or the end of credit), so no dispatch ahead.
            assert expected in (None, admission.worker_id), (client, mode, candidates, fallback)
            if mode == "fixed":
                assert expected == admission.worker_id
            forecast.admitted(client, weight, mode, candidates, admission)
        else:
            _, client, weight, worker, service = op
            forecast.note(client, worker, store.charge(Charge(client, weight, worker, service)))


def test_a_forecast_is_firm_only_while_the_chosen_worker_keeps_credit_after_the_request():
    forecast = AdmissionForecast(QUANTUM)
    ranked = [AdmitCandidate("w1", True, 30.0), AdmitCandidate("w2", True, 30.0)]
    assert forecast.choose("alice", 1.0, "d2lpm", ranked, "w2") == "w1"  # 50 of credit, costs 30
    forecast.note("alice", "w1", 20.0)  # credit left, but not enough for this request's own cost
    assert forecast.choose("alice", 1.0, "d2lpm", ranked, "w2") is None
    forecast.note("alice", "w1", -5.0)
    assert forecast.choose("alice", 1.0, "d2lpm", ranked, "w2") == "w2"
    forecast.note("alice", "w2", -5.0)  # nobody has credit: a refill decides, no firm forecast
    assert forecast.choose("alice", 1.0, "d2lpm", ranked, "w2") is None
    assert forecast.choose("alice", 1.0, "fixed", ranked[:1], "w1") == "w1"


def test_an_admission_that_refilled_leaves_every_refilled_worker_with_credit_in_the_forecast():
    store, forecast = LocalLedgerStore(QUANTUM), AdmissionForecast(QUANTUM)
    both = [AdmitCandidate("w1", True, 0.0), AdmitCandidate("w2", True, 0.0)]
    for worker in ("w1", "w2"):  # alice spends all her credit on both workers
        forecast.note("alice", worker, store.charge(Charge("alice", 1.0, worker, QUANTUM + 10.0)))
    refilled = store.admit("alice", 1.0, "d2lpm", [both[0]._replace(cost=45.0), both[1]], "w1")
    forecast.admitted("alice", 1.0, "d2lpm", [both[0]._replace(cost=45.0), both[1]], refilled)
    assert refilled.refills == 1 and refilled.worker_id == "w1"
    # w2 was refilled too (40 of credit), w1 kept 40 - 45 < 0: w2 is next, firmly.
    w2_first = [both[1], both[0]]
    assert forecast.choose("alice", 1.0, "d2lpm", w2_first, "w1") == "w2"
    assert store.admit("alice", 1.0, "d2lpm", w2_first, "w1").worker_id == "w2"


def test_another_replicas_spending_is_what_the_forecast_cannot_see():
    # Router A forecasts from what it read; router B spends the credit in between: A's forecast is
    # then wrong, and only the admission's answer counts (the router cancels the early call).
    shared = LocalLedgerStore(QUANTUM)
    forecast_a = AdmissionForecast(QUANTUM)
    ranked = [AdmitCandidate("w1", True, 10.0), AdmitCandidate("w2", True, 10.0)]
    first = shared.admit("alice", 1.0, "d2lpm", ranked, "w1")
    forecast_a.admitted("alice", 1.0, "d2lpm", ranked, first)
    assert first.worker_id == "w1"
    shared.charge(Charge("alice", 1.0, "w1", QUANTUM))  # router B's charge: A never reads it
    assert forecast_a.choose("alice", 1.0, "d2lpm", ranked, "w1") == "w1"
    assert shared.admit("alice", 1.0, "d2lpm", ranked, "w1").worker_id == "w2"


def test_the_forecast_keeps_its_most_recent_clients_only():
    forecast = AdmissionForecast(QUANTUM, max_clients=2)
    ranked = [AdmitCandidate("w1", True, 1.0), AdmitCandidate("w2", True, 1.0)]
    forecast.note("alice", "w1", -5.0)
    forecast.note("bob", "w1", -5.0)
    forecast.note("alice", "w2", 3.0)  # alice is the most recent now
    forecast.note("carol", "w1", -5.0)  # bob, the least recent, is dropped
    assert forecast.choose("alice", 1.0, "d2lpm", ranked, "w1") == "w2"
    assert forecast.choose("bob", 1.0, "d2lpm", ranked, "w2") == "w1"  # new again: one quantum each
    with pytest.raises(ValueError, match="max_clients"):
        AdmissionForecast(QUANTUM, max_clients=0)
