"""D2LPM's service gap across N workers, through the simulator (docs/cluster-fairness.md).

The stated bound is the sum of the workers' single-worker DLPM bounds, and it is proven for two
clients that are backlogged on every worker. Two checks here:

- When every request is there from the start (the router places the whole trace at once, so
  each client's cost is spread over the workers in quantum-sized chunks), the measured gap stays
  within the N-worker bound, on random clusters, clients, weights and quanta.
- A flood breaks it: the flooder is queued on every worker while a light client's requests wait
  on one worker at a time, so the gap grows past even N times the single-worker bound. This is
  the case the docs call early binding; it is why D2LPM states no unconditional cluster bound.

D2LPM with late binding (``d2lpm_gated``: the router's gate picks who goes next by VTC counter,
D2LPM's rule picks where) has a bound with no Q and no N in it, for clients that both have a
request waiting in the gate; it is checked on random clusters with Poisson arrivals and a flooder,
and on the flood that breaks D2LPM's.
"""

from __future__ import annotations

import dataclasses

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.simulator.cost_model import StepCostModel
from bench.simulator.metrics import cluster_gap_over_bound, gate_gap_over_bound, summarize
from bench.simulator.simulation import SimConfig, simulate
from bench.workloads import build_pattern, generate_trace
from bench.workloads.clients import ClientSpec
from bench.workloads.distributions import AllAtStart, Poisson, Uniform
from bench.workloads.spec import WorkloadSpec
from radixfair_engine.config import EngineConfig, SchedulerConfig
from radixfair_router.config import PolicyConfig

COST = StepCostModel(fixed_s=0.01, prefill_step_s=0.0, per_seq_s=1e-4, per_token_s=2e-4, per_attention_s=1e-8)


def cluster(workers: int, quantum: float, bin_s: float = 1.0) -> SimConfig:
    engine = EngineConfig(
        num_pages=256,
        max_batched_tokens=512,
        max_running_requests=8,
        max_waiting_requests=100_000,
        scheduler=SchedulerConfig(policy="dlpm", quantum=quantum),
    )
    routing = PolicyConfig(name="d2lpm", quantum=quantum)
    return SimConfig(engine, COST, num_workers=workers, routing=routing, bin_s=bin_s)


client = st.tuples(
    st.integers(10, 40),  # requests, all at t=0
    st.sampled_from([1.0, 2.0]),  # weight
    st.sampled_from([0, 128, 512]),  # document tokens
)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    workers=st.integers(2, 4),
    quantum=st.sampled_from([256.0, 512.0, 1024.0]),
    clients=st.lists(client, min_size=2, max_size=4),
    seed=st.integers(0, 100),
)
def test_d2lpm_keeps_backlogged_clients_within_the_n_worker_bound(workers, quantum, clients, seed):
    specs = tuple(
        ClientSpec(f"c{i}", AllAtStart(n), Uniform(16, 64), Uniform(8, 48), weight=w, shared_prefix_len=doc)
        for i, (n, w, doc) in enumerate(clients)
    )
    result = simulate(
        cluster(workers, quantum), generate_trace(WorkloadSpec("all_at_start", 1.0, specs), seed)
    )
    assert cluster_gap_over_bound(result) <= 1.0


def gated(config: SimConfig, slots: int) -> SimConfig:
    """The same cluster behind D2LPM with late binding, ``slots`` requests in flight per worker."""
    assert config.routing is not None
    routing = dataclasses.replace(config.routing, name="d2lpm_gated", vtc_slots_per_worker=slots)
    return dataclasses.replace(config, routing=routing)


FLOOD = {
    "num_light": 24,
    "num_heavy": 1,
    "rate": 4.0,
    "heavy_factor": 80,
    "duration_s": 2.0,
    "doc_tokens": 512,
}
FLOOD_SEED = 1


def test_a_flood_takes_d2lpm_past_n_times_the_single_worker_bound():
    """One flooder at 80x the rate of 24 light clients on 4 workers, quantum 512.

    A counterexample, so it names one trace. It has moved as the cold rule changed: with cold
    requests ranked by load, then cache, 12 light clients at 80x on seed 1 did it; with the smaller
    cache first (issue 13), that trace stays within the 4-worker sum (0.64), while 24 light clients
    exceeded it on seeds 1, 2 and 3 (1.01, 1.31, 1.19). Since local DLPM's lift stopped cutting a
    returning client's kept credit (d827999), seed 1 exceeds it (1.21) and seeds 2 and 3 do not (0.59, 0.55).
    """
    spec = build_pattern("heavy_client", FLOOD)
    result = simulate(cluster(4, 512.0, bin_s=0.05), generate_trace(spec, FLOOD_SEED))
    summary = summarize(result)
    assert summary["gap_over_bound"] > 1.0  # the single-worker formula
    assert cluster_gap_over_bound(result) > 1.0  # and the sum over the 4 workers
    assert "heavy" in summary["gap_pair"]


def test_late_binding_keeps_the_flood_that_breaks_d2lpm_within_its_bound():
    """The trace above behind the gate, 2 slots per worker: the flooder and every light client stay
    within the late-binding bound while both wait in the gate (0.14 of it; an FCFS gate gave 3.45x it on
    the seed-2 trace), and even the cluster-backlogged gap stays within the single-worker formula that
    D2LPM exceeds 2.4x."""
    spec = build_pattern("heavy_client", FLOOD)
    result = simulate(gated(cluster(4, 512.0, bin_s=0.05), 2), generate_trace(spec, FLOOD_SEED))
    assert result.router is not None and result.router.gate is not None
    assert 0.0 < gate_gap_over_bound(result) <= 1.0
    assert summarize(result)["gap_over_bound"] <= 1.0


arriving = st.tuples(
    st.sampled_from([2.0, 8.0, 40.0]),  # requests per second (40: a flooder)
    st.sampled_from([1.0, 2.0, 4.0]),  # weight
    st.sampled_from([0, 256, 1024]),  # document tokens
)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    workers=st.integers(2, 4),
    quantum=st.sampled_from([256.0, 1024.0, 4096.0]),
    slots=st.integers(1, 8),
    clients=st.lists(arriving, min_size=2, max_size=5),
    seed=st.integers(0, 100),
)
def test_late_binding_keeps_clients_waiting_in_the_gate_within_its_bound(
    workers, quantum, slots, clients, seed
):
    specs = tuple(
        ClientSpec(f"c{i}", Poisson(rate), Uniform(16, 64), Uniform(8, 48), weight=w, shared_prefix_len=doc)
        for i, (rate, w, doc) in enumerate(clients)
    )
    trace = generate_trace(WorkloadSpec("poisson", 1.5, specs), seed)
    result = simulate(gated(cluster(workers, quantum, bin_s=0.05), slots), trace)
    assert gate_gap_over_bound(result) <= 1.0
