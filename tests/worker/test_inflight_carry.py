"""InFlightStep.carry_for: which row of the step in flight each next chunk's placeholder input comes from.

Checked against its definition (a chunk whose request still has a placeholder takes the row its
request sampled in the step in flight; any other chunk takes none) over random batches: the same
requests in the same rows, shuffled rows, requests that left or arrived between the steps.
"""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st

from radixfair_engine.inflight import InFlightStep, SampledTokens
from radixfair_engine.model_runner import ScheduledChunk
from radixfair_engine.request import Request, SamplingConfig


@given(
    count=st.integers(1, 12),
    order=st.randoms(use_true_random=False),
    shuffle=st.booleans(),
    kept=st.lists(st.booleans(), min_size=12, max_size=12),
    newcomers=st.integers(0, 3),
)
def test_each_placeholder_comes_from_the_row_its_request_sampled(count, order, shuffle, kept, newcomers):
    requests = [Request(f"r{i}", "c", [1, 2, 3], SamplingConfig(max_tokens=8)) for i in range(count)]
    sampled = [ScheduledChunk(r, 3, 1) for r in requests]
    step = InFlightStep(sampled, sampled, SampledTokens(torch.arange(count), list(range(count))))
    # The next step: some requests still wait for their sampled token, some were resolved (or left),
    # newcomers (prefilling, no placeholder) join; rows may come in another order.
    for request, keep in zip(requests, kept):
        request.pending_tokens = 1 if keep else 0
    nxt = [ScheduledChunk(r, 4, 1) for r in requests]
    if shuffle:
        order.shuffle(nxt)
    nxt += [
        ScheduledChunk(Request(f"n{i}", "c", [5, 6], SamplingConfig(max_tokens=8)), 0, 2)
        for i in range(newcomers)
    ]

    carry = step.carry_for(nxt)

    expected = tuple(requests.index(c.request) if c.request.pending_tokens else -1 for c in nxt)
    if all(row < 0 for row in expected):
        assert carry is None
    else:
        assert carry is not None and carry.rows == expected
