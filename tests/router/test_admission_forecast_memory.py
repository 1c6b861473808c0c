"""The admission forecast's memory stays bounded when worker ids churn (a restarted pod comes back
under a new id), and its forecasts stay the admission's own on the workers in rotation."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from radixfair_router.admission_forecast import AdmissionForecast
from radixfair_router.ledger_state import AdmitCandidate, Charge, LocalLedgerStore

QUANTUM = 50.0
MAX_CLIENTS, MAX_WORKERS = 2, 4

# One step of a cluster's life: a client's admission over the workers now in rotation, after
# `replaced` of them were replaced by new ids, then a charge on the chosen worker.
step = st.tuples(
    st.sampled_from(("alice", "bob")),  # no more than MAX_CLIENTS: no client is dropped
    st.integers(0, 3),  # workers replaced before this admission
    st.lists(st.sampled_from((0.0, 10.0, 35.0, 60.0)), min_size=3, max_size=3),
    st.sampled_from((-20.0, 5.0, 60.0)),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(step, min_size=1, max_size=60))
def test_worker_churn_keeps_the_forecast_bounded_and_exact(steps):
    store = LocalLedgerStore(QUANTUM)
    forecast = AdmissionForecast(QUANTUM, max_clients=MAX_CLIENTS, max_workers=MAX_WORKERS)
    rotation, next_id = ["w0", "w1", "w2"], 3
    for client, replaced, costs, service in steps:
        for slot in range(replaced):
            rotation[slot] = f"w{next_id}"
            next_id += 1
        candidates = [AdmitCandidate(w, True, cost) for w, cost in zip(rotation, costs)]
        expected = forecast.choose(client, 1.0, "d2lpm", candidates, rotation[0])
        admission = store.admit(client, 1.0, "d2lpm", candidates, rotation[0])
        assert expected in (None, admission.worker_id)
        forecast.admitted(client, 1.0, "d2lpm", candidates, admission)
        charge = Charge(client, 1.0, admission.worker_id, service)
        forecast.note(client, admission.worker_id, store.charge(charge))
        # Past MAX_WORKERS a client keeps its latest admission's workers (3 here).
        assert forecast.pairs <= MAX_CLIENTS * MAX_WORKERS
