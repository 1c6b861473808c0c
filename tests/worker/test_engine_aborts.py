"""An abort always reaches its request, whichever of the two the engine sees first.

The engine process's receiving thread queues a submit and then its abort
while the engine steps; a step that took the inbox before the submit and the
aborts after the abort lost the abort, and the request ran to max_tokens.
"""

from __future__ import annotations

import threading

from worker.engine_harness import greedy, make_stack

from radixfair_engine.request import FinishReason

MAX_TOKENS = 64


def step_until_idle(engine, max_steps: int = 2_000) -> None:
    for _ in range(max_steps):
        if not engine.has_work():
            return
        engine.step()
    raise AssertionError(f"engine still busy after {max_steps} steps")


def test_an_abort_taken_a_step_before_its_submit_still_cancels_it(tiny_model_dir):
    engine = make_stack(tiny_model_dir).engine
    request = greedy([100, 101, 102, 103], MAX_TOKENS, "late-submit", ignore_eos=True)

    engine.abort("late-submit")
    engine.step()  # the abort is taken; its request is not there yet
    engine.submit(request)
    step_until_idle(engine)

    assert request.finish_reason is FinishReason.CANCELLED
    assert request.output_ids == []
    assert not engine.running and not engine.waiting


def test_an_abort_whose_request_never_arrives_is_dropped_after_one_step(tiny_model_dir):
    # Worker-internal ids are never reused; a stale abort must not linger and keep the engine busy.
    engine = make_stack(tiny_model_dir).engine
    engine.abort("never-submitted")
    engine.step()
    engine.step()
    assert not engine.has_work()
    later = greedy([7, 8, 9], 3, "never-submitted", ignore_eos=True)
    engine.submit(later)
    step_until_idle(engine)
    assert later.finish_reason is FinishReason.LENGTH and len(later.output_ids) == 3


def test_every_request_aborted_right_after_its_submit_is_cancelled_while_the_engine_steps(tiny_model_dir):
    # The real race: one thread queues submit-then-abort pairs (as the engine loop's receiver does)
    # while this one steps. None may run to max_tokens.
    engine = make_stack(tiny_model_dir).engine
    requests = [greedy([200 + i, 300, 400], MAX_TOKENS, f"pair-{i}", ignore_eos=True) for i in range(40)]
    done = threading.Event()

    def submit_then_abort() -> None:
        for request in requests:
            engine.submit(request)
            engine.abort(request.request_id)
        done.set()

    sender = threading.Thread(target=submit_then_abort)
    sender.start()
    for _ in range(100_000):
        if done.is_set() and not engine.has_work():
            break
        engine.step()
    sender.join(timeout=60)

    assert [r.finish_reason for r in requests] == [FinishReason.CANCELLED] * len(requests)
    assert all(len(r.output_ids) < MAX_TOKENS for r in requests)
    assert not engine.running and not engine.waiting
    total = engine.allocator.num_pages
    assert engine.allocator.num_free + engine.cache.cached_pages == total
