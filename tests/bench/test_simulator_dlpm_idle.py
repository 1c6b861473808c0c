"""A client that comes back with credit keeps it: DLPM's lift in the simulator (real Engine, cache, policy).

The case is the one found on the 200-request flood under D2LPM (docs/evaluation.md, "Several workers"):
a light client's queue empties after nearly every admission, so it "returns" again and again while a
flood keeps the worker backlogged. An earlier ``lift`` lowered the credit a returning client still held
to the most underserved backlogged client's (here the flooder's, part-way through its round). The light
client then got one request in, and the rest of its burst waited for the next refill, behind a fresh
quantum of the flooder's.
"""

from __future__ import annotations

from bench.simulator.cost_model import StepCostModel
from bench.simulator.simulation import SimConfig, simulate
from bench.workloads.trace import Segment, Trace, TraceRequest
from radixfair_engine.config import EngineConfig, SchedulerConfig

COST = StepCostModel(fixed_s=0.01, prefill_step_s=0.0, per_seq_s=1e-4, per_token_s=2e-4, per_attention_s=1e-8)
Q = 2048.0
W_IN, W_OUT = 1.0, 2.0  # SchedulerConfig's defaults
RUNNING = 4  # max_running_requests: the flooder's R in the bound
DOC, QUESTION, FLOOD_OUT = 256, 16, 8
BURST, BURST_PROMPT, BURST_OUT = 6, 200, 8
BIN_S = 1e-4  # service bins fine enough to cut at the return instant (steps are >= 10 ms)
# The light client's return, at several phases of the flooder's rounds.
RETURNS_S = (0.5, 0.73, 1.0)


def flood_and_return(return_s: float) -> Trace:
    """A flooder's 200 requests on its hot document from t=0; a light client's small request at t=0, which
    leaves it idle with most of its quantum, and a burst of 6 requests at ``return_s``."""
    doc = Segment("text", "flood/doc", DOC)
    flood = [
        TraceRequest(f"f{i:03d}", "flood", 1.0, 0.0, (doc, Segment("text", f"f{i}", QUESTION)), FLOOD_OUT)
        for i in range(200)
    ]
    first = TraceRequest("l-first", "light", 1.0, 0.0, (Segment("text", "l-first", 64),), 8)
    burst = [
        TraceRequest(f"l{i}", "light", 1.0, return_s, (Segment("text", f"l{i}", BURST_PROMPT),), BURST_OUT)
        for i in range(BURST)
    ]
    return Trace("flood_and_return", 0, tuple([*flood, first, *burst]))


def flooder_service_while_the_burst_waits(return_s: float) -> float:
    engine = EngineConfig(
        num_pages=256,
        max_batched_tokens=512,
        max_running_requests=RUNNING,
        max_waiting_requests=100_000,
        scheduler=SchedulerConfig(policy="dlpm", quantum=Q, idle_deficit="lift"),
    )
    result = simulate(SimConfig(engine, COST, bin_s=BIN_S), flood_and_return(return_s))
    burst = [f for f in result.recorder.finished if f.client_id == "light" and f.request_id != "l-first"]
    assert len(burst) == BURST
    last_admitted = max(f.admitted for f in burst)
    service = result.recorder.service
    flood = service.values[service.index["flood"]]
    return float(flood[round(return_s / BIN_S) : int(last_admitted / BIN_S) + 1].sum())


def test_a_light_client_returning_with_credit_is_served_within_the_flooders_current_round():
    # The light client left with Q - (64 + 2·8) = 1968 of credit, and its burst costs 6·(200 + 2·8) =
    # 1296, so it needs no refill. Without a refill the flooder's charges while the burst waits are
    # q_F(return) - q_F(end) < Q + D_F (dlpm's bound, steps b and c), D_F = w_in·L_F + w_out·M_F·R_F.
    # A refill the light client waits for hands the flooder another Q first (its longer match walks
    # first): the earlier lift let it charge up to 1.3x this before the burst was in.
    bound = Q + W_IN * (DOC + QUESTION) + W_OUT * FLOOD_OUT * RUNNING
    assert 1968 > 1296
    for return_s in RETURNS_S:
        assert flooder_service_while_the_burst_waits(return_s) < bound, return_s
