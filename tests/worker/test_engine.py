"""Engine behaviour on a tiny random Llama: caching, batching, preemption, stopping."""

from __future__ import annotations

import pytest
from worker.engine_harness import greedy, make_stack, run_to_completion

from radixfair_engine.request import FinishReason, RequestStatus


def solo_output(model_dir, prompt, max_tokens, **engine):
    stack = make_stack(model_dir, **engine)
    request = greedy(prompt, max_tokens, "solo", ignore_eos=True)
    run_to_completion(stack.engine, [request])
    return request.output_ids


def test_shared_200_token_prefix_is_reported_cached_and_not_recomputed(tiny_model_dir):
    stack = make_stack(tiny_model_dir, page_size=8)
    engine = stack.engine
    prefix = [(i * 37) % 5000 + 100 for i in range(200)]
    first = greedy(prefix + [11, 12, 13], 4, "first", ignore_eos=True)
    run_to_completion(engine, [first])
    computed_before = engine.computed_tokens

    second = greedy(prefix + [21, 22, 23, 24, 25], 4, "second", ignore_eos=True)
    run_to_completion(engine, [second])

    assert first.num_cached_tokens == 0
    assert second.num_cached_tokens == 200
    # Only the 5 new prompt tokens, then one input per decode step after the first token.
    assert engine.computed_tokens - computed_before == 5 + (4 - 1)
    stats = engine.client_stats["client-a"]
    assert stats.cached_tokens == 200 and stats.prompt_tokens == 203 + 205


def test_new_requests_join_the_running_batch_every_step(tiny_model_dir):
    engine = make_stack(tiny_model_dir).engine
    early = greedy(list(range(100, 120)), 30, "early", ignore_eos=True)
    engine.submit(early)
    for _ in range(5):
        engine.step()
    late = greedy(list(range(300, 310)), 5, "late", ignore_eos=True)
    engine.submit(late)
    engine.step()
    assert late.status is RequestStatus.RUNNING and early.status is RequestStatus.RUNNING
    assert len(late.output_ids) == 1 and len(early.output_ids) == 6


def test_long_prompt_is_chunked_while_others_keep_decoding(tiny_model_dir):
    engine = make_stack(tiny_model_dir, max_batched_tokens=32, max_running_requests=16).engine
    decoding = greedy(list(range(100, 110)), 40, "decoding", ignore_eos=True)
    engine.submit(decoding)
    engine.step()
    long_prompt = greedy(list(range(500, 700)), 2, "long", ignore_eos=True)
    engine.submit(long_prompt)
    steps_to_first_token = 0
    while not long_prompt.output_ids:
        before = len(decoding.output_ids)
        engine.step()
        steps_to_first_token += 1
        assert len(decoding.output_ids) == before + 1  # decode never stalls
    assert steps_to_first_token >= 200 // 32


def test_preempted_requests_finish_with_the_same_tokens(tiny_model_dir):
    prompts = [[(7 * i + j) % 4000 + 50 for j in range(40 + 9 * i)] for i in range(4)]
    expected = [solo_output(tiny_model_dir, p, 48) for p in prompts]
    # 20 pages of 8 tokens cannot hold four 40-90 token prompts growing by 48 tokens each.
    stack = make_stack(tiny_model_dir, num_pages=20, page_size=8, max_batched_tokens=256)
    requests = [greedy(p, 48, f"r{i}", ignore_eos=True) for i, p in enumerate(prompts)]
    run_to_completion(stack.engine, requests)
    assert sum(r.preemptions for r in requests) > 0
    assert [r.output_ids for r in requests] == expected
    assert all(r.finish_reason is FinishReason.LENGTH for r in requests)


def test_all_pages_return_once_requests_finish_and_cache_is_evicted(tiny_model_dir):
    stack = make_stack(tiny_model_dir, num_pages=64, page_size=8)
    engine = stack.engine
    requests = [greedy(list(range(10 * i, 10 * i + 30)), 10, f"r{i}", ignore_eos=True) for i in range(5)]
    run_to_completion(engine, requests)
    assert engine.allocator.num_free + engine.cache.cached_pages == 64
    engine.cache.evict(64)
    assert engine.allocator.num_free == 64


def test_stop_token_ids_stop_strings_and_max_tokens(tiny_model_dir):
    engine = make_stack(tiny_model_dir).engine
    reference = greedy([100, 200, 300, 400], 12, "reference", ignore_eos=True)
    run_to_completion(engine, [reference])
    stop_at = reference.output_ids[5]
    by_token = greedy([100, 200, 300, 400], 12, "by-token", ignore_eos=True, stop_token_ids=(stop_at,))
    capped = greedy([100, 200, 300, 400], 3, "capped", ignore_eos=True)
    run_to_completion(engine, [by_token, capped])
    first_hit = reference.output_ids.index(stop_at)
    assert by_token.output_ids == reference.output_ids[: first_hit + 1]
    assert by_token.finish_reason is FinishReason.STOP
    assert capped.output_ids == reference.output_ids[:3] and capped.finish_reason is FinishReason.LENGTH

    stop_text = reference.final_text[len(reference.final_text) // 2 :][:3]
    assert stop_text.strip(), "reference text too short to pick a stop string"
    by_string = greedy([100, 200, 300, 400], 12, "by-string", ignore_eos=True, stop_strings=(stop_text,))
    run_to_completion(engine, [by_string])
    assert by_string.finish_reason is FinishReason.STOP
    assert by_string.final_text == reference.final_text[: reference.final_text.index(stop_text)]


def test_cancelled_request_frees_its_pages(tiny_model_dir):
    stack = make_stack(tiny_model_dir, num_pages=32, page_size=8)
    engine = stack.engine
    request = greedy(list(range(100, 150)), 100, "to-cancel", ignore_eos=True)
    engine.submit(request)
    for _ in range(3):
        engine.step()
    assert engine.allocator.num_free < 32
    engine.abort("to-cancel")
    engine.step()
    assert request.finish_reason is FinishReason.CANCELLED
    assert not engine.running
    assert engine.allocator.num_free + engine.cache.cached_pages == 32


def test_generation_stops_at_the_context_window(tiny_model_dir):
    stack = make_stack(tiny_model_dir, max_context_tokens=64)
    request = greedy(list(range(100, 160)), 50, "near-limit", ignore_eos=True)
    run_to_completion(stack.engine, [request])
    assert len(request.prompt_ids) + len(request.output_ids) == 64
    assert request.finish_reason is FinishReason.LENGTH


@pytest.mark.parametrize("temperature", [0.7, 1.3])
def test_seeded_sampling_is_reproducible_whatever_shares_the_batch(tiny_model_dir, temperature):
    def sample(extra: int) -> list[int]:
        engine = make_stack(tiny_model_dir).engine
        mine = greedy([5, 6, 7, 8], 16, "mine", temperature=temperature, top_p=0.9, top_k=50, seed=1234)
        others = [greedy([9 + i] * (3 + i), 16, f"other{i}", temperature=1.0) for i in range(extra)]
        run_to_completion(engine, [mine, *others])
        return mine.output_ids

    assert sample(0) == sample(3)


def test_top_k_one_is_greedy(tiny_model_dir):
    engine = make_stack(tiny_model_dir).engine
    reference = greedy([42, 43, 44], 10, "greedy", ignore_eos=True)
    sampled = greedy([42, 43, 44], 10, "top1", ignore_eos=True, temperature=1.0, top_k=1, seed=7)
    run_to_completion(engine, [reference, sampled])
    assert sampled.output_ids == reference.output_ids
