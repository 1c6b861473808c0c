"""The tail diagnostic of issue 13 (bench/eval/eval_mixtures_tail.py): where a request's latency went.

The simulator records when the router placed each request and why; a request's end-to-end latency
is then gate (arrival to placement) + queue (placement to admission) + service (admission to its
last token). Behind the late-binding gate a flood's requests wait in the gate, not on the workers;
without a gate nothing does. The diagnostic never runs on the fixed evaluation seeds.
"""

from __future__ import annotations

import dataclasses
import sys

import pytest

from bench.eval import eval_mixtures_tail
from bench.eval.eval_mixtures import SEEDS
from bench.eval.eval_mixtures_tail import tail_split
from bench.simulator.cost_model import StepCostModel
from bench.simulator.simulation import SimConfig, simulate
from bench.workloads import generate_trace
from bench.workloads.clients import ClientSpec
from bench.workloads.distributions import AllAtStart, Uniform
from bench.workloads.spec import WorkloadSpec
from radixfair_engine.config import EngineConfig, SchedulerConfig
from radixfair_router.config import PolicyConfig

COST = StepCostModel(fixed_s=0.01, prefill_step_s=0.0, per_seq_s=1e-4, per_token_s=2e-4, per_attention_s=1e-8)
ENGINE = EngineConfig(
    num_pages=256,
    max_batched_tokens=512,
    max_running_requests=4,
    max_waiting_requests=100_000,
    scheduler=SchedulerConfig(policy="dlpm", quantum=512.0),
)
# A flooder with 60 requests on its document and a light client with 4, all there at t = 0.
TRACE = generate_trace(
    WorkloadSpec(
        "flood",
        1.0,
        (
            ClientSpec("flood", AllAtStart(60), Uniform(16, 32), Uniform(8, 16), shared_prefix_len=256),
            ClientSpec("light", AllAtStart(4), Uniform(16, 32), Uniform(8, 16)),
        ),
    ),
    1,
)


def finished(routing: str, slots: int = 2):
    config = SimConfig(
        ENGINE,
        COST,
        num_workers=2,
        routing=PolicyConfig(name=routing, quantum=512.0, vtc_slots_per_worker=slots),
        bin_s=0.1,
    )
    return simulate(config, TRACE).recorder.finished


@pytest.mark.parametrize("routing", ["d2lpm", "d2lpm_gated"])
def test_every_request_is_placed_after_it_arrives_and_admitted_after_it_is_placed(routing):
    done = finished(routing)
    assert len(done) == len(TRACE.requests)
    for f in done:
        assert f.arrival <= f.dispatched <= f.admitted <= f.finished
        assert f.route  # the policy's reason is recorded


def test_behind_the_gate_the_flood_waits_in_the_gate_and_without_it_on_the_workers():
    gated = finished("d2lpm_gated", slots=2)
    plain = finished("d2lpm")
    assert max(f.dispatched - f.arrival for f in gated) > 0
    assert all(f.dispatched == f.arrival for f in plain)
    # 4 requests in flight in all behind the gate, so no worker queue beyond its 4 running slots.
    assert max(f.admitted - f.dispatched for f in gated) < max(f.admitted - f.dispatched for f in plain)


def test_a_tails_gate_queue_and_service_add_up_to_its_latency():
    split = tail_split(finished("d2lpm_gated"), 0.1)
    assert split["tail_requests"] == round(0.1 * len(TRACE.requests))
    parts = split["tail_gate"] + split["tail_queue"] + split["tail_service"]
    assert parts == pytest.approx(split["tail_e2e"], rel=1e-9)
    assert split["tail_gate"] > 0


def test_the_diagnostic_refuses_the_fixed_evaluation_seeds(monkeypatch, tmp_path):
    argv = ["eval_mixtures_tail.py", "--seeds", "1", str(SEEDS[0]), "--out", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit, match="fixed evaluation seeds"):
        eval_mixtures_tail.main()
    assert not list(tmp_path.iterdir())


def test_a_recorded_request_without_a_router_is_placed_when_it_arrives():
    config = SimConfig(dataclasses.replace(ENGINE), COST, bin_s=0.1)
    for f in simulate(config, TRACE).recorder.finished:
        assert f.dispatched == f.arrival and f.route == ""
