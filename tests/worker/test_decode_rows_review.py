"""Review of the decode rows (engine/decode_rows.py) on a real tiny engine: any mix of what moves rows.

Admissions, preemptions (a pool of 10 pages of 4 tokens), aborts at any time and requests whose chunk
fails the forward pass alone, with overlap off and on: after every step each row holds a distinct
running request, a running request is out of the rows only while its final token is in flight, and
in the end every request has finished, no row is left and every page is free or cached.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from worker.engine_harness import greedy, make_stack

from radixfair_engine.request import Request, SamplingConfig

PAGE = 4


@st.composite
def _workloads(draw: st.DrawFn) -> list[tuple[str, int, int]]:
    """Events: ("submit", prompt length, max tokens), ("abort", pick, 0), ("bad", 0, 0), ("step", 0, 0)."""
    events = []
    for _ in range(draw(st.integers(4, 40))):
        kind = draw(st.sampled_from(["submit", "submit", "abort", "bad", "step", "step", "step"]))
        events.append((kind, draw(st.integers(1, 3 * PAGE)), draw(st.integers(1, 12))))
    return events


def _check_rows(engine) -> None:  # noqa: ANN001
    rows = engine._decode_rows.snapshot()
    running = {id(r) for r in engine.running}
    assert len({id(r) for r in rows}) == len(rows) and {id(r) for r in rows} <= running
    for request in engine.running:
        if not any(request is r for r in rows):
            # Out of the rows while running only with its final token in flight.
            assert len(request.output_ids) >= request.output_limit and request.pending_tokens


@pytest.mark.parametrize("overlap", [False, True])
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(events=_workloads())
def test_any_mix_of_admissions_preemptions_aborts_and_failures_keeps_the_rows_whole(
    tiny_model_dir, overlap, events
):
    engine = make_stack(
        tiny_model_dir,
        num_pages=10,
        page_size=PAGE,
        max_batched_tokens=10,
        max_running_requests=6,
        overlap_schedule=overlap,
    ).engine
    names = itertools.count()
    submitted: list[Request] = []
    for kind, size, max_tokens in events:
        if kind == "submit":
            index = next(names)
            prompt = [(index * 7 + i) % 90 + 3 for i in range(size)]
            request = greedy(prompt, max_tokens, f"r{index}", ignore_eos=True)
            engine.submit(request)
            submitted.append(request)
        elif kind == "bad":
            engine.submit(
                Request(f"bad{next(names)}", "broken", [5, 60_000, 6], SamplingConfig(max_tokens=3))
            )
        elif kind == "abort" and submitted:
            engine.abort(submitted[size % len(submitted)].request_id)
        else:
            engine.step()
        _check_rows(engine)
    for _ in range(2000):
        if not engine.has_work():
            break
        engine.step()
        _check_rows(engine)
    assert not engine.running and not engine.waiting and not engine._decode_rows.snapshot()
    assert all(r.is_finished for r in submitted)
    assert engine.allocator.num_free + engine.cache.cached_pages == engine.allocator.num_pages
