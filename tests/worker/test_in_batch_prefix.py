"""In-batch prefix sharing, through the real engine: one request computes a cold shared prefix."""

from __future__ import annotations

import pytest
from worker.engine_harness import greedy, prompt_encoder, run_to_completion

from radixfair_engine.config import EngineConfig, SchedulerConfig
from radixfair_engine.engine_builder import build_engine
from radixfair_engine.request import FinishReason, RequestStatus

PAGE = 16
PREFIX_PAGES = 6
PREFIX = [(i * 37) % 5000 + 100 for i in range(PREFIX_PAGES * PAGE)]
PREFIX_POLICIES = ["lpm", "lpm_aging", "dlpm"]


def build(model_dir, policy: str, hold_pages: int = 2, **engine: object):
    settings = {"num_pages": 256, "page_size": PAGE, "max_batched_tokens": 256, **engine}
    scheduler = SchedulerConfig(policy=policy, in_batch_prefix_pages=hold_pages)
    return build_engine(
        EngineConfig(scheduler=scheduler, **settings), model_dir, prompt_encoder(model_dir)
    ).engine


def shared_prefix_requests(count: int, prefix: list[int] = PREFIX, client=lambda i: "client-a"):
    return [
        greedy(prefix + [7000 + 10 * i + j for j in range(5)], 4, f"r{i}", client(i), ignore_eos=True)
        for i in range(count)
    ]


@pytest.mark.parametrize("policy", PREFIX_POLICIES)
@pytest.mark.parametrize("max_batched_tokens", [256, 32], ids=["one-chunk", "chunked"])
def test_one_request_computes_a_cold_shared_prefix_and_the_others_match_it(
    tiny_model_dir, policy, max_batched_tokens
):
    engine = build(tiny_model_dir, policy, max_batched_tokens=max_batched_tokens, max_running_requests=16)
    requests = shared_prefix_requests(4, client=lambda i: f"client-{i % 2}")

    run_to_completion(engine, requests)

    cached = sorted(r.num_cached_tokens for r in requests)
    assert cached[0] == 0
    assert all(c >= len(PREFIX) for c in cached[1:]), cached
    assert all(r.finish_reason is FinishReason.LENGTH and len(r.output_ids) == 4 for r in requests)
    # The prefix once, each request's own 5 tokens, one input per later decode step.
    assert engine.computed_tokens == len(PREFIX) + 4 * 5 + 4 * 3


def test_with_the_rule_off_every_request_admitted_together_computes_the_prefix(tiny_model_dir):
    engine = build(tiny_model_dir, "dlpm", hold_pages=0, max_batched_tokens=512)
    requests = shared_prefix_requests(4)

    run_to_completion(engine, requests)

    assert [r.num_cached_tokens for r in requests] == [0, 0, 0, 0]


def test_fcfs_keeps_strict_arrival_order_and_admits_all_at_once(tiny_model_dir):
    engine = build(tiny_model_dir, "fcfs", max_batched_tokens=512)
    requests = shared_prefix_requests(4)
    for request in requests:
        engine.submit(request)

    engine.step()

    assert all(r.status is RequestStatus.RUNNING for r in requests)


def test_a_shared_prefix_below_the_threshold_holds_nobody_back(tiny_model_dir):
    engine = build(tiny_model_dir, "dlpm", hold_pages=PREFIX_PAGES + 1, max_batched_tokens=512)
    requests = shared_prefix_requests(4)
    for request in requests:
        engine.submit(request)

    engine.step()

    assert all(r.status is RequestStatus.RUNNING for r in requests)


def test_unrelated_requests_are_admitted_past_held_ones(tiny_model_dir):
    engine = build(tiny_model_dir, "lpm")
    shared = shared_prefix_requests(3)
    unrelated = greedy([9000 + i for i in range(40)], 4, "unrelated", "client-b", ignore_eos=True)
    for request in [*shared, unrelated]:
        engine.submit(request)

    engine.step()

    assert unrelated.status is RequestStatus.RUNNING
    assert [r.status for r in shared].count(RequestStatus.RUNNING) == 1


def test_held_requests_go_on_when_the_leader_is_aborted(tiny_model_dir):
    # A 32-token budget prefills the 96-token prefix over 3 steps; the leader is cancelled after the first.
    engine = build(tiny_model_dir, "dlpm", max_batched_tokens=32, max_running_requests=16)
    requests = shared_prefix_requests(4)
    for request in requests:
        engine.submit(request)
    engine.step()
    (leader,) = [r for r in requests if r.status is RequestStatus.RUNNING]
    followers = [r for r in requests if r is not leader]
    assert all(r.status is RequestStatus.WAITING for r in followers)

    engine.abort(leader.request_id)
    run_to_completion(engine, [])

    assert leader.finish_reason is FinishReason.CANCELLED
    assert all(r.finish_reason is FinishReason.LENGTH for r in followers)
    # The cancelled leader's first chunk (2 pages) stayed cached; one follower computed the rest.
    cached = sorted(r.num_cached_tokens for r in followers)
    assert cached[0] == 2 * PAGE and all(c >= len(PREFIX) for c in cached[1:]), cached


def test_held_requests_go_on_when_the_leader_is_preempted(tiny_model_dir):
    # 8 pages: a decoding request (1 page, growing) and the leader (7 pages) fill the pool, so the
    # decoder's second page preempts the leader, the newest, in the middle of its chunked prefill.
    engine = build(tiny_model_dir, "dlpm", num_pages=8, max_batched_tokens=32, max_running_requests=16)
    decoding = greedy([9000 + i for i in range(15)], 30, "decoding", "client-b", ignore_eos=True)
    engine.submit(decoding)
    engine.step()
    requests = shared_prefix_requests(4)
    for request in requests:
        engine.submit(request)
    engine.step()
    (leader,) = [r for r in requests if r.status is RequestStatus.RUNNING]

    run_to_completion(engine, [])

    assert leader.preemptions >= 1
    assert all(r.finish_reason is FinishReason.LENGTH and len(r.output_ids) == 4 for r in requests)
    assert decoding.finish_reason is FinishReason.LENGTH


def test_dlpm_never_lets_a_request_overtake_its_clients_held_due_request(tiny_model_dir):
    # max_overtakes=0: a client's oldest waiting request is always due, so its others never go first.
    engine = build_engine(
        EngineConfig(
            num_pages=256,
            page_size=PAGE,
            max_batched_tokens=64,
            max_running_requests=16,
            scheduler=SchedulerConfig(policy="dlpm", max_overtakes=0),
        ),
        tiny_model_dir,
    ).engine
    (leader,) = shared_prefix_requests(1, client=lambda i: "client-b")
    engine.submit(leader)
    engine.step()  # the leader's first 64 tokens; its last 37 leave room for others next step
    held = greedy(PREFIX + [8001, 8002], 4, "held", "client-a", ignore_eos=True)
    later = greedy([9000 + i for i in range(20)], 4, "later", "client-a", ignore_eos=True)
    engine.submit(held)
    engine.submit(later)

    admitted_at: dict[str, int] = {}
    while engine.has_work():
        engine.step()
        for request in (held, later):
            if request.times_admitted:
                admitted_at.setdefault(request.request_id, engine.steps)

    assert admitted_at["held"] <= admitted_at["later"]
    assert admitted_at["held"] > 2  # it did wait for the leader's prefix
    assert held.num_cached_tokens >= len(PREFIX)
    assert later.finish_reason is FinishReason.LENGTH


def test_the_threshold_must_not_be_negative(tiny_model_dir):
    with pytest.raises(ValueError, match="in_batch_prefix_pages"):
        build(tiny_model_dir, "dlpm", hold_pages=-1)
