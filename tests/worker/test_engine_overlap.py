"""Overlap scheduling: the engine one step behind the device gives the same results as without it.

On the CPU every "asynchronous" launch is synchronous, but the bookkeeping is
the same code that runs on the GPU: placeholders in output_ids, next inputs
gathered from the previous step's sampled tensor (an unreplaced placeholder
is id -1 and fails the embedding lookup), stops found one step late, drains
before preemption, aborts and host-sampled rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
from worker.engine_harness import greedy, make_stack, run_to_completion

from radixfair.tokenization import ChatTurn
from radixfair_engine.config import EngineConfig
from radixfair_engine.engine import Engine
from radixfair_engine.request import PLACEHOLDER_TOKEN, FinishReason, Request


@dataclass(frozen=True)
class Outcome:
    output_ids: list[int]
    finish_reason: FinishReason | None
    final_text: str
    num_cached_tokens: int


def outcome(request: Request) -> Outcome:
    return Outcome(request.output_ids, request.finish_reason, request.final_text, request.num_cached_tokens)


def cached_paths(engine: Engine) -> list[list[int]]:
    """Token ids of every root-to-leaf path of the radix tree."""
    paths, stack = [], [(child, list(child.tokens)) for child in engine.cache.root.children.values()]
    while stack:
        node, tokens = stack.pop()
        if not node.children:
            paths.append(tokens)
        stack.extend((child, tokens + child.tokens) for child in node.children.values())
    return paths


def drive(
    engine: Engine,
    arrivals: dict[int, list[Request]],
    aborts: dict[int, list[str]] | None = None,
    max_steps: int = 2_000,
) -> None:
    """Submits requests (and aborts) at the given step numbers and steps until idle, checking the tree."""
    aborts = aborts or {}
    last = max([*arrivals, *aborts])
    for step in range(max_steps):
        for request in arrivals.get(step, []):
            engine.submit(request)
        for request_id in aborts.get(step, []):
            engine.abort(request_id)
        if step > last and not engine.has_work():
            return
        engine.step()
        assert all(PLACEHOLDER_TOKEN not in path for path in cached_paths(engine)), step
    raise AssertionError(f"engine still busy after {max_steps} steps")


def assert_cache_holds_only_real_prefixes(engine: Engine, requests: list[Request]) -> None:
    for path in cached_paths(engine):
        assert any(r.fill_ids[: len(path)] == path for r in requests), path


def assert_no_page_leaks(engine: Engine) -> None:
    total = engine.allocator.num_pages
    assert not engine.running and not engine.waiting
    assert engine.allocator.num_free + engine.cache.cached_pages == total
    engine.cache.evict(total)
    assert engine.allocator.num_free == total


@pytest.fixture(scope="module")
def reference_tokens(tiny_model_dir) -> Callable[[list[int], int], Request]:
    """Greedy, no-overlap runs of single prompts on one engine for the module: building an engine reads
    the tokenizer (a quarter second of CPU each), and a finished request leaves nothing but cached pages.
    No two reference prompts share a whole 16-token page, so every reference is computed from scratch."""
    engine = make_stack(tiny_model_dir).engine

    def run(prompt: list[int], max_tokens: int) -> Request:
        request = greedy(prompt, max_tokens, "reference", ignore_eos=True)
        run_to_completion(engine, [request])
        assert request.num_cached_tokens == 0
        return request

    return run


def test_overlap_setting_is_validated_and_auto_means_cuda_only():
    with pytest.raises(ValueError, match="overlap_schedule"):
        EngineConfig(overlap_schedule="sometimes")
    assert not EngineConfig(device="cpu").overlap_enabled
    assert EngineConfig(device="cuda").overlap_enabled
    assert EngineConfig(device="cpu", overlap_schedule=True).overlap_enabled
    assert not EngineConfig(device="cuda", overlap_schedule=False).overlap_enabled


def test_with_overlap_a_step_returns_the_previous_steps_tokens(tiny_model_dir):
    sync = make_stack(tiny_model_dir, overlap_schedule=False).engine
    overlap = make_stack(tiny_model_dir, overlap_schedule=True).engine
    requests = {}
    for name, engine in (("sync", sync), ("overlap", overlap)):
        requests[name] = greedy([100, 200, 300], 3, name, ignore_eos=True)
        engine.submit(requests[name])

    assert [o.new_token_ids for o in sync.step()] == [requests["sync"].output_ids]
    assert overlap.step() == []
    assert requests["overlap"].output_ids == [PLACEHOLDER_TOKEN]
    first = overlap.step()
    # The second step was launched with the first token gathered on the device.
    assert [o.new_token_ids for o in first] == [requests["sync"].output_ids[:1]]
    assert requests["overlap"].output_ids[1] == PLACEHOLDER_TOKEN
    while overlap.has_work():
        overlap.step()
    run_to_completion(sync, [])
    assert requests["overlap"].output_ids == requests["sync"].output_ids
    assert overlap.steps == sync.steps


def mixed_scenario(model_dir, stop_at: int, stop_text: str, overlap: bool) -> tuple[Engine, list[Request]]:
    """Staggered arrivals, a 120-token prompt chunked by a 32-token budget, a shared 64-token prefix,
    a stop token and a stop string finishing mid-batch, and max_tokens of 1 and 3."""
    engine = make_stack(
        model_dir, page_size=8, max_batched_tokens=32, max_running_requests=16, overlap_schedule=overlap
    ).engine
    base = [100, 200, 300, 400]
    long_prompt = [(13 * i) % 3000 + 500 for i in range(120)]
    by_token = greedy(base, 20, "by-token", ignore_eos=True, stop_token_ids=(stop_at,))
    chunked = greedy(long_prompt, 10, "chunked", ignore_eos=True)
    one = greedy([7, 8, 9, 10, 11], 1, "one", ignore_eos=True)
    by_string = greedy(base, 20, "by-string", ignore_eos=True, stop_strings=(stop_text,))
    three = greedy([55] * 9, 3, "three", ignore_eos=True)
    sharer = greedy(long_prompt[:64] + [21, 22, 23], 8, "sharer", ignore_eos=True)
    arrivals = {0: [by_token, chunked], 2: [one], 3: [by_string], 5: [three], 14: [sharer]}
    drive(engine, arrivals)
    return engine, [by_token, chunked, one, by_string, three, sharer]


def test_mixed_staggered_batch_is_identical_with_and_without_overlap(tiny_model_dir, reference_tokens):
    reference = reference_tokens([100, 200, 300, 400], 20)
    stop_at = reference.output_ids[6]
    stop_text = reference.final_text[len(reference.final_text) // 2 :][:3]
    assert stop_text.strip(), "reference text too short to pick a stop string"

    sync_engine, sync = mixed_scenario(tiny_model_dir, stop_at, stop_text, overlap=False)
    overlap_engine, overlap = mixed_scenario(tiny_model_dir, stop_at, stop_text, overlap=True)

    assert [outcome(r) for r in overlap] == [outcome(r) for r in sync]
    by_token, chunked, one, by_string, three, sharer = overlap
    assert by_token.finish_reason is FinishReason.STOP and len(by_token.output_ids) < 20
    assert by_string.finish_reason is FinishReason.STOP and len(by_string.output_ids) < 20
    assert [len(one.output_ids), len(three.output_ids)] == [1, 3]
    assert sharer.num_cached_tokens == 64
    for engine, requests in ((sync_engine, sync), (overlap_engine, overlap)):
        assert_cache_holds_only_real_prefixes(engine, requests)
        assert_no_page_leaks(engine)


def test_token_computed_after_a_stop_is_discarded_and_never_cached(tiny_model_dir, reference_tokens):
    prompt = [100, 200, 300, 400, 500]
    reference = reference_tokens(prompt, 20)
    # A stop whose token fills a page: the next step (already launched with overlap) computes
    # that token's K/V, which completes the page; it must not reach the cache.
    stop_index = next(k for k in (2, 10, 18) if reference.output_ids.index(reference.output_ids[k]) == k)
    stop_at = reference.output_ids[stop_index]

    def run(overlap: bool) -> tuple[Request, Request]:
        engine = make_stack(tiny_model_dir, page_size=8, overlap_schedule=overlap).engine
        stopped = greedy(prompt, 20, "stopped", ignore_eos=True, stop_token_ids=(stop_at,))
        drive(engine, {0: [stopped]})
        follow_up = greedy(stopped.fill_ids + [42], 2, "follow-up", ignore_eos=True)
        drive(engine, {0: [follow_up]})
        assert_no_page_leaks(engine)
        return stopped, follow_up

    sync_stopped, sync_follow_up = run(overlap=False)
    stopped, follow_up = run(overlap=True)
    assert stopped.output_ids == sync_stopped.output_ids == reference.output_ids[: stop_index + 1]
    assert len(stopped.fill_ids) % 8 == 0
    assert follow_up.num_cached_tokens == sync_follow_up.num_cached_tokens == len(stopped.fill_ids) - 8


def test_abort_mid_flight_keeps_only_known_tokens_and_frees_pages(tiny_model_dir, reference_tokens):
    reference = reference_tokens(list(range(100, 150)), 40)
    engine = make_stack(tiny_model_dir, num_pages=32, page_size=8, overlap_schedule=True).engine
    doomed = greedy(list(range(100, 150)), 40, "doomed", ignore_eos=True)
    bystander = greedy(list(range(100, 150)), 12, "bystander", ignore_eos=True)
    drive(engine, {0: [doomed], 1: [bystander]}, aborts={6: ["doomed"]})
    assert doomed.finish_reason is FinishReason.CANCELLED
    # Six steps launched before the abort; the sixth token was in flight and is kept, as known.
    assert doomed.output_ids == reference.output_ids[:6]
    assert bystander.output_ids == reference.output_ids[:12]
    assert_cache_holds_only_real_prefixes(engine, [doomed, bystander])
    assert_no_page_leaks(engine)


def test_preempted_requests_finish_with_the_same_tokens_under_overlap(tiny_model_dir, reference_tokens):
    prompts = [[(7 * i + j) % 4000 + 50 for j in range(40 + 9 * i)] for i in range(4)]
    expected = [reference_tokens(p, 48).output_ids for p in prompts]
    # 20 pages of 8 tokens cannot hold four 40-90 token prompts growing by 48 tokens each.
    engine = make_stack(
        tiny_model_dir, num_pages=20, page_size=8, max_batched_tokens=256, overlap_schedule=True
    ).engine
    requests = [greedy(p, 48, f"r{i}", ignore_eos=True) for i, p in enumerate(prompts)]
    drive(engine, {0: requests[:2], 3: requests[2:]})
    assert sum(r.preemptions for r in requests) > 0
    assert [r.output_ids for r in requests] == expected
    assert all(r.finish_reason is FinishReason.LENGTH for r in requests)
    assert_cache_holds_only_real_prefixes(engine, requests)
    assert_no_page_leaks(engine)


def test_seeded_sampling_joining_overlapped_greedy_batch_is_reproducible(tiny_model_dir, reference_tokens):
    def run(overlap: bool, others: int) -> list[list[int]]:
        engine = make_stack(tiny_model_dir, overlap_schedule=overlap).engine
        greedy_ones = [greedy([30 + i] * (4 + i), 24, f"greedy{i}", ignore_eos=True) for i in range(2)]
        seeded = greedy([5, 6, 7, 8], 8, "seeded", ignore_eos=True, temperature=0.8, top_p=0.9, seed=99)
        noise = [greedy([9 + i] * 3, 6, f"noise{i}", temperature=1.0) for i in range(others)]
        # The seeded rows arrive while greedy steps are in flight and leave before they finish.
        drive(engine, {0: greedy_ones, 4: [seeded, *noise]})
        return [r.output_ids for r in (seeded, *greedy_ones)]

    baseline = run(overlap=False, others=0)
    # The seeded request really sampled (a greedy fallback would pass the comparisons below).
    assert baseline[0] != reference_tokens([5, 6, 7, 8], 8).output_ids
    assert run(overlap=True, others=0) == baseline
    assert run(overlap=True, others=2) == baseline


@pytest.mark.real_model
def test_real_model_eos_mid_batch_is_identical_with_and_without_overlap(smollm2_dir):
    def run(overlap: bool) -> tuple[Engine, list[Request]]:
        stack = make_stack(smollm2_dir, page_size=8, overlap_schedule=overlap)
        chats = ["Answer with one word: is the sea salty?", "Write a long poem about the moon.", "Say hi."]
        # The first answer meets EOS at its 7th token, the other two are still talking at their 12th: EOS
        # lands while two rows decode (a longer budget only adds steps after it, at a real model's cost).
        requests = [
            greedy(stack.encoder.encode_chat([ChatTurn("user", text)]), 12, f"chat{i}")
            for i, text in enumerate(chats)
        ]
        drive(stack.engine, {0: requests[:2], 2: requests[2:]})
        return stack.engine, requests

    sync_engine, sync = run(overlap=False)
    overlap_engine, overlap = run(overlap=True)
    assert [outcome(r) for r in overlap] == [outcome(r) for r in sync]
    reasons = [r.finish_reason for r in overlap]
    assert reasons == [FinishReason.STOP, FinishReason.LENGTH, FinishReason.LENGTH], reasons  # EOS mid-batch
    assert_cache_holds_only_real_prefixes(overlap_engine, overlap)
    assert_no_page_leaks(overlap_engine)
