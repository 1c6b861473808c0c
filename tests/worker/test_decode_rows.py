"""A decoding request keeps its row of the decode batch while it runs (engine/decode_rows.py).

The CUDA-graph runner rewrites a staged page-table row whenever another request takes it; ordered
like the running list, the oldest request finishing moved every row behind it, at nearly every step
of a closed loop. Checked on a real tiny engine stepping a closed loop of requests of mixed lengths:
between two decode-only steps, the requests in both whose row changed number at most those that
left (each leaving request hands its row to one other). And on the structure itself, with hypothesis
over any order of admissions and removals.
"""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st
from worker.engine_harness import greedy, make_stack

from radixfair_engine.decode_rows import DecodeRows
from radixfair_engine.request import Request, SamplingConfig

STREAMS = 12
STEPS = 160


class _RecordingRunner:
    """The engine's real runner, recording the chunks of every step it runs."""

    def __init__(self, runner) -> None:  # noqa: ANN001
        self._runner = runner
        self.steps: list[list[object]] = []

    def run(self, chunks, sampled, carry=None):  # noqa: ANN001, ANN201
        self.steps.append([(chunk.request, chunk.length) for chunk in chunks])
        return self._runner.run(chunks, sampled, carry)

    def __getattr__(self, name: str):  # noqa: ANN204
        return getattr(self._runner, name)


def test_between_decode_steps_only_the_rows_of_leaving_requests_change_hands(tiny_model_dir) -> None:
    engine = make_stack(tiny_model_dir, num_pages=512, max_batched_tokens=512).engine
    recorder = _RecordingRunner(engine.runner)
    engine.runner = recorder
    names = itertools.count()
    # Mixed lengths, so requests leave from anywhere in the batch, the oldest included.
    lengths = itertools.cycle([9, 14, 6, 20, 11, 3, 17, 8])

    def submit() -> None:
        index = next(names)
        engine.submit(greedy([7 + index % 50, 9, 11, 13], next(lengths), f"r{index}", ignore_eos=True))

    for _ in range(STREAMS):
        submit()
    for _ in range(STEPS):
        for output in engine.step():
            if output.finished:
                submit()  # closed loop: the batch stays full and keeps changing
    decode_steps = [
        [request for request, _ in step] for step in recorder.steps if all(n == 1 for _, n in step)
    ]
    compared = 0
    for before, after in itertools.pairwise(decode_steps):
        row_before = {id(r): i for i, r in enumerate(before)}
        row_after = {id(r): i for i, r in enumerate(after)}
        stayed = row_before.keys() & row_after.keys()
        moved = sum(row_before[key] != row_after[key] for key in stayed)
        left = len(row_before.keys() - row_after.keys())
        assert moved <= left, (moved, left)
        compared += left > 0
    assert compared >= 20  # requests left between many pairs of decode steps


def _request(name: int) -> Request:
    return Request(f"q{name}", "c", [1, 2, 3], SamplingConfig(max_tokens=4))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 63)), max_size=120))
def test_rows_stay_dense_and_a_removal_moves_at_most_the_last_row(ops: list[tuple[bool, int]]) -> None:
    rows, present, admitted = DecodeRows(), [], []
    names = itertools.count()
    for add, pick in ops:
        if add or not present:
            request = _request(next(names))
            rows.add(request)
            present.append(request)
            admitted.append(request)
            continue
        request = present.pop(pick % len(present))
        before = rows.snapshot()
        rows.remove(request)
        rows.remove(request)  # a second removal (retired, then finished) changes nothing
        after = rows.snapshot()
        moved = [r for i, r in enumerate(after) if before[i] is not r]
        assert len(after) == len(before) - 1
        assert moved == ([] if before[-1] is request else [before[-1]])
    assert sorted(map(id, rows)) == sorted(map(id, present))
    oldest_first = sorted(present, key=rows.admission_order)
    assert oldest_first == [r for r in admitted if any(r is p for p in present)]
