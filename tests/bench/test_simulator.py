"""The simulator drives the real Engine, scheduling policies and router policies, in virtual time."""

from __future__ import annotations

from collections import Counter

import pytest

from bench.simulator.cost_model import StepCostModel
from bench.simulator.metrics import summarize
from bench.simulator.simulation import SimConfig, simulate
from bench.workloads import build_pattern, generate_trace
from bench.workloads.clients import ClientSpec
from bench.workloads.distributions import AllAtStart, Constant, Poisson, Uniform
from bench.workloads.spec import WorkloadSpec
from bench.workloads.trace import Segment, Trace, TraceRequest
from radixfair_engine.config import EngineConfig, SchedulerConfig
from radixfair_engine.engine import Engine
from radixfair_router.config import PolicyConfig

COST = StepCostModel(fixed_s=0.01, prefill_step_s=0.0, per_seq_s=1e-4, per_token_s=2e-4, per_attention_s=1e-8)


def engine(policy: str, quantum: float = 512.0, **overrides) -> EngineConfig:
    settings = {
        "num_pages": 256,
        "max_batched_tokens": 512,
        "max_running_requests": 8,
        "max_waiting_requests": 100_000,
        **overrides,
    }
    return EngineConfig(scheduler=SchedulerConfig(policy=policy, quantum=quantum), **settings)


def backlogged_trace() -> Trace:
    """Four clients with every request waiting from t=0; one has a much longer document than the rest."""
    clients = tuple(
        ClientSpec(
            f"c{i}",
            AllAtStart(30),
            Uniform(16, 48),
            Uniform(8, 32),
            shared_prefix_len=768 if i == 0 else 128,
            weight=2.0 if i == 3 else 1.0,
        )
        for i in range(4)
    )
    return generate_trace(WorkloadSpec("backlogged", 1.0, clients), 5)


def starvation_trace() -> Trace:
    """A hot client's 40 requests on a cached document, and one cold request arriving just after."""
    doc = Segment("text", "hot/doc", 512)
    hot = [
        TraceRequest(f"hot-{i:02d}", "hot", 1.0, 0.0, (doc, Segment("text", f"hot-{i}", 32)), 32)
        for i in range(40)
    ]
    cold = TraceRequest("cold-0", "cold", 1.0, 0.05, (Segment("text", "cold-0", 64),), 32)
    return Trace("starvation", 0, tuple(hot + [cold]))


def test_the_simulated_worker_is_the_real_engine_and_its_policy_accounts_the_recorded_service():
    result = simulate(SimConfig(engine("dlpm"), COST), backlogged_trace())
    worker = result.workers[0]
    assert type(worker.engine) is Engine and type(worker.engine.policy.inner).__name__ == "DLPMPolicy"
    assert worker.engine.policy.inner.refill_count > 0
    assert result.recorder.client_service() == worker.engine.policy.client_service()
    assert len(result.recorder.finished) == 120 and result.steps > 100


def test_dlpm_keeps_the_service_gap_of_backlogged_clients_within_its_bound():
    summary = summarize(simulate(SimConfig(engine("dlpm"), COST), backlogged_trace()))
    assert 0 < summary["service_gap"] <= summary["gap_bound"]
    assert summary["gap_over_bound"] <= 1.0


def test_lpm_breaks_the_bound_that_dlpm_keeps_on_the_same_trace():
    summary = summarize(simulate(SimConfig(engine("lpm"), COST), backlogged_trace()))
    assert summary["gap_over_bound"] > 1.0


def test_lpm_starves_the_cold_client_until_the_hot_prefix_is_drained_and_dlpm_does_not():
    trace = starvation_trace()
    finished = {}
    for policy in ("lpm", "dlpm"):
        result = simulate(SimConfig(engine(policy, quantum=256.0), COST), trace)
        finished[policy] = {f.request_id: f for f in result.recorder.finished}
    lpm, dlpm = finished["lpm"], finished["dlpm"]
    hot_admissions_lpm = [f.admitted for rid, f in lpm.items() if rid.startswith("hot")]
    assert lpm["cold-0"].admitted >= max(hot_admissions_lpm)
    assert lpm["cold-0"].first_token > 3 * dlpm["cold-0"].first_token


def test_a_conversation_turn_hits_the_cache_on_the_previous_turn_and_its_generated_answer():
    trace = generate_trace(build_pattern("multi_turn", {"num_clients": 2, "duration_s": 10.0}), 2)
    result = simulate(SimConfig(engine("fcfs", num_pages=1024), COST), trace)
    by_id = {r.request_id: r for r in trace.requests}
    later_turns = [f for f in result.recorder.finished if by_id[f.request_id].after is not None]
    assert later_turns
    for f in later_turns:
        previous = by_id[by_id[f.request_id].after]
        # Everything up to the last whole page of (previous prompt + previous answer) is cached.
        covered = previous.prompt_tokens + previous.max_tokens - 1
        assert f.cached_tokens >= covered - covered % 16


def test_the_same_trace_and_config_replay_to_identical_results():
    trace = generate_trace(build_pattern("mixed", {"duration_s": 10.0}), 3)
    config = SimConfig(engine("vtc"), COST)
    first, second = simulate(config, trace), simulate(config, trace)
    assert first.recorder.finished == second.recorder.finished


def heavy_trace(workers: int) -> Trace:
    clients = tuple(
        ClientSpec(
            f"c{i}", Poisson(6.0 if i == 0 else 1.5), Uniform(16, 32), Constant(16), shared_prefix_len=512
        )
        for i in range(2 * workers)
    )
    return generate_trace(WorkloadSpec("routing", 10.0, clients), 1)


def routed(policy: str, local: str, workers: int = 4, trace: Trace | None = None):
    config = SimConfig(
        engine(local, quantum=1024.0),
        COST,
        num_workers=workers,
        routing=PolicyConfig(name=policy, quantum=2048.0),
    )
    return simulate(config, trace or heavy_trace(workers))


def test_d2lpm_keeps_clients_on_their_prefix_workers_where_round_robin_scatters_them():
    d2lpm, rr = routed("d2lpm", "dlpm"), routed("round_robin", "lpm")
    assert summarize(d2lpm)["hit_rate"] > summarize(rr)["hit_rate"] + 0.1
    placements = Counter((f.client_id, f.worker) for f in d2lpm.recorder.finished if f.client_id != "c0")
    per_client = Counter(f.client_id for f in d2lpm.recorder.finished if f.client_id != "c0")
    top_share = [
        max(n for (c, _), n in placements.items() if c == client) / total
        for client, total in per_client.items()
    ]
    assert min(top_share) > 0.5
    assert {d for d in d2lpm.router.reasons} >= {"longest_match"}


def test_the_router_ledger_books_exactly_the_service_the_workers_delivered():
    result = routed("d2lpm", "dlpm")
    from bench.simulator.sim_router import run_sync

    booked = {c.client_id: c.service for c in run_sync(result.router.ledger.snapshot())}
    delivered = result.recorder.client_service()
    assert booked.keys() == delivered.keys()
    for client, service in delivered.items():
        assert abs(booked[client] - service) < 1e-6


def gate_trace() -> Trace:
    """A client floods 20 requests at t=0; another sends 2 just after."""
    heavy = [
        TraceRequest(f"h{i:02d}", "heavy", 1.0, 0.0, (Segment("text", f"h{i}", 64),), 32) for i in range(20)
    ]
    light = [TraceRequest(f"l{i}", "light", 1.0, 0.01, (Segment("text", f"l{i}", 64),), 32) for i in range(2)]
    return Trace("gate", 0, tuple(heavy + light))


def gated(policy: str, bin_s: float = 1.0):
    config = SimConfig(
        engine("fcfs"),
        COST,
        num_workers=2,
        routing=PolicyConfig(name=policy, vtc_slots_per_worker=1),
        bin_s=bin_s,
    )
    return simulate(config, gate_trace())


def test_global_vtc_holds_requests_in_the_routers_gate_to_its_slots():
    gate, ungated = gated("global_vtc"), gated("least_load")
    assert gate.router.gate is not None and len(gate.recorder.finished) == 22
    assert gate.router.max_inflight == 2
    assert ungated.router.max_inflight == 22


def test_global_vtc_gate_releases_the_newly_arrived_light_client_before_the_flood():
    finished = {f.request_id: f for f in gated("global_vtc").recorder.finished}
    heavy_done = sorted(f.finished for rid, f in finished.items() if rid.startswith("h"))
    assert max(finished["l0"].finished, finished["l1"].finished) <= heavy_done[4]


def test_the_simulator_refuses_overlap_scheduling_which_its_cost_model_does_not_price():
    config = SimConfig(engine=engine("fcfs", overlap_schedule=True), cost=COST)
    with pytest.raises(ValueError, match="overlap_schedule"):
        simulate(config, starvation_trace())


def test_requests_held_in_global_vtcs_gate_count_as_waiting_so_its_fairness_metrics_are_defined():
    """Both clients have requests held in the gate while the other is served: backlogged together.

    The trace lasts about 4 s; bins of 20 ms give Jain's index windows in which both wait throughout."""
    summary = summarize(gated("global_vtc", bin_s=0.02))
    assert summary["jain"] == summary["jain"]  # not NaN: some window had two backlogged clients
    assert summary["service_gap"] > 0
    assert sorted(summary["gap_pair"]) == ["heavy", "light"]


def test_a_request_its_worker_refuses_costs_its_client_nothing_in_the_routers_ledger():
    """A prompt longer than the context is refused at submit: the router settles it as nobody served."""
    from bench.simulator.sim_router import run_sync  # the router's ledger needs redis-py

    too_long = TraceRequest("long", "big", 1.0, 0.0, (Segment("text", "long", 9000),), 8)
    fine = TraceRequest("ok", "small", 1.0, 0.0, (Segment("text", "ok", 64),), 8)
    config = SimConfig(engine("dlpm"), COST, num_workers=2, routing=PolicyConfig(name="d2lpm"))
    result = simulate(config, Trace("refused", 0, (too_long, fine)))
    assert result.rejected == ["long"]
    booked = {c.client_id: c.service for c in run_sync(result.router.ledger.snapshot())}
    assert booked.get("big", 0.0) == 0.0
    assert booked["small"] > 0
    assert sum(result.router.inflight.values()) == 0
