"""Which pages a running request puts in the radix cache, and when, through the real engine.

Prompt pages go in as soon as they are computed (a shared system prompt is shared once one request
has prefilled it); pages of generated tokens go in when the request leaves (PageBinder.release, at a
finish or a preemption): no other prompt can match a running request's output, and inserting them
page by page cost every decode step. What must hold either way: the next turn of a conversation
(prompt + answer + a new question) finds the whole first turn in the cache.
"""

from __future__ import annotations

from worker.engine_harness import greedy, make_stack

from radixfair_engine.request import RequestStatus

PAGE = 4


def finish(engine) -> None:  # noqa: ANN001 - the real Engine
    for _ in range(1_000):
        if not engine.has_work():
            return
        engine.step()
    raise AssertionError("the engine did not finish")


def test_output_pages_are_cached_when_the_request_leaves_and_the_next_turn_matches_them(tiny_model_dir):
    engine = make_stack(tiny_model_dir, "dlpm", num_pages=128, page_size=PAGE).engine
    prompt = [(13 * i) % 700 + 20 for i in range(10 * PAGE)]  # ten whole pages
    first = greedy(prompt, 21, "turn-1", ignore_eos=True)
    engine.submit(first)
    while len(first.output_ids) < 3 * PAGE:  # three pages of output, none of them cached yet
        engine.step()
    assert first.status is RequestStatus.RUNNING
    assert engine.cache.cached_pages == len(prompt) // PAGE
    finish(engine)

    conversation = prompt + first.output_ids
    assert engine.cache.match_length(conversation) == len(conversation) - len(conversation) % PAGE
    second = greedy(conversation + [31, 32, 33], 2, "turn-2", ignore_eos=True)
    engine.submit(second)
    engine.step()
    assert second.num_cached_tokens == len(conversation) - len(conversation) % PAGE
    finish(engine)
    assert engine.allocator.num_free + engine.cache.cached_pages == 128
