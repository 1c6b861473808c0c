"""Split decode attention merged in the same launch (the last split program to arrive merges).

The CPU interpreter runs a grid's programs one after another, so these tests show the
arithmetic, the arrival counting and the counter reset; they cannot show memory ordering
between programs running at once (bench/kernels/gpu_decode_one_launch_bench.py does, on the GPU).
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("triton")

from radixfair_engine.kernels.accuracy import TOLERANCE, poisoned_like, relative_error  # noqa: E402
from radixfair_engine.kernels.decode_attention import (  # noqa: E402
    new_split_counters,
    paged_decode_attention,
)
from radixfair_engine.kernels.paged_fixtures import PagedContext, random_paged_context  # noqa: E402
from radixfair_engine.kernels.reference import paged_attention_reference  # noqa: E402
from radixfair_engine.model.backend import ForwardBatch  # noqa: E402
from radixfair_engine.model.triton_backend import TritonBackend  # noqa: E402

HEAD_DIM, PAGE_SIZE, BLOCK_N = 16, 4, 16
# The exact fp32 merge is the same arithmetic in both paths; only reduction order could differ.
FP32_SAME = {"rtol": 1e-6, "atol": 1e-6}


def decode_case(
    seq_lens: list[int], q_heads: int, kv_heads: int, dtype: torch.dtype
) -> tuple[torch.Tensor, PagedContext]:
    # A zero-length sequence is a padding row (as CUDA-graph batches have): no context, no new token.
    ctx = random_paged_context(seq_lens, [min(1, s) for s in seq_lens], kv_heads, HEAD_DIM, PAGE_SIZE, dtype)
    return torch.randn(len(seq_lens), q_heads, HEAD_DIM, dtype=dtype), ctx


def decode(
    q: torch.Tensor, ctx: PagedContext, num_splits: int, counters: torch.Tensor | None
) -> torch.Tensor:
    out = poisoned_like(q)  # NaN: a row nobody merges stays NaN
    return paged_decode_attention(
        q,
        ctx.k_cache,
        ctx.v_cache,
        ctx.page_table,
        ctx.seq_lens,
        HEAD_DIM**-0.5,
        out=out,
        num_splits=num_splits,
        block_n=BLOCK_N,
        split_counters=counters,
    )


def fp64_reference(q: torch.Tensor, ctx: PagedContext) -> torch.Tensor:
    return paged_attention_reference(
        q.double(),
        ctx.k_cache.double(),
        ctx.v_cache.double(),
        list(range(q.shape[0] + 1)),  # row b is sequence b's token
        ctx.seq_lens_host,
        ctx.page_table,
        HEAD_DIM**-0.5,
    )


def assert_same_as_two_launches(one: torch.Tensor, two: torch.Tensor, dtype: torch.dtype) -> None:
    if dtype == torch.float32:
        torch.testing.assert_close(one, two, **FP32_SAME)
    else:
        assert relative_error(one, two.float()) < TOLERANCE[dtype]


@settings(max_examples=8, deadline=None)  # each example is two interpreted launches
@given(
    seq_lens=st.lists(st.integers(0, 40), min_size=1, max_size=3).filter(any),
    num_splits=st.sampled_from([1, 2, 4, 8]),
    heads=st.sampled_from([(2, 1), (3, 1), (4, 2), (2, 2)]),  # (query heads, KV heads): GQA and MHA
    dtype=st.sampled_from([torch.float32, torch.bfloat16]),
    seed=st.integers(0, 2**16),
)
def test_one_launch_equals_two_launches_and_the_fp64_reference(
    seq_lens: list[int], num_splits: int, heads: tuple[int, int], dtype: torch.dtype, seed: int
) -> None:
    torch.manual_seed(seed)
    q_heads, kv_heads = heads
    q, ctx = decode_case(seq_lens, q_heads, kv_heads, dtype)
    counters = new_split_counters(len(seq_lens), kv_heads, "cpu")

    one = decode(q, ctx, num_splits, counters)

    assert_same_as_two_launches(one, decode(q, ctx, num_splits, None), dtype)
    assert relative_error(one, fp64_reference(q, ctx)) < TOLERANCE[dtype]
    assert not counters.any()


def test_lengths_inside_one_split_leave_the_others_empty_and_padding_rows_zero() -> None:
    # With 8 splits of one 16-key tile each, lengths 1..16 put every key in split 0.
    q, ctx = decode_case([1, 2, 16, 0, 17], q_heads=6, kv_heads=2, dtype=torch.float32)
    counters = new_split_counters(5, 2, "cpu")

    one = decode(q, ctx, num_splits=8, counters=counters)

    torch.testing.assert_close(one, decode(q, ctx, 8, None), **FP32_SAME)
    assert relative_error(one, fp64_reference(q, ctx)) < TOLERANCE[torch.float32]
    assert torch.equal(one[3], torch.zeros_like(one[3]))
    assert not counters.any()


def test_consecutive_launches_reuse_one_counter_buffer_left_zero_by_each() -> None:
    counters = new_split_counters(4, 2, "cpu")  # more than any launch below needs
    for seq_lens, num_splits in [([33, 5], 4), ([1, 40, 7, 0], 2), ([9], 8)]:
        q, ctx = decode_case(seq_lens, q_heads=6, kv_heads=2, dtype=torch.float32)

        one = decode(q, ctx, num_splits, counters)

        assert relative_error(one, fp64_reference(q, ctx)) < TOLERANCE[torch.float32]
        assert not counters.any()


@pytest.mark.parametrize(
    "counters",
    [
        torch.zeros(3, dtype=torch.int32),
        torch.zeros(8, dtype=torch.int64),
        torch.zeros(16, dtype=torch.int32)[::2],
    ],
)
def test_counters_too_few_of_another_dtype_or_strided_are_refused(counters: torch.Tensor) -> None:
    q, ctx = decode_case([5, 6], q_heads=4, kv_heads=2, dtype=torch.float32)

    with pytest.raises(ValueError, match="split_counters"):
        decode(q, ctx, num_splits=2, counters=counters)


def decode_batch(ctx: PagedContext, max_seq_len: int) -> ForwardBatch:
    batch = len(ctx.seq_lens_host)
    return ForwardBatch(
        input_ids=torch.zeros(batch, dtype=torch.int64),
        positions=ctx.positions,
        query_start_loc=ctx.query_start_loc,
        seq_lens=ctx.seq_lens,
        page_table=ctx.page_table,
        slot_mapping=ctx.slot_mapping,
        logits_indices=torch.arange(batch),
        max_query_len=1,
        max_seq_len=max_seq_len,  # as a captured graph's bound: larger than any real length
        query_lens_host=[1] * batch,
        seq_lens_host=ctx.seq_lens_host,
    )


def test_backend_merges_in_one_launch_on_counters_it_keeps_across_calls() -> None:
    # 64 SMs for 2 sequences x 2 KV heads: the heuristic splits the 2,048-key bound 8 ways.
    one_launch = TritonBackend(num_sms=64, one_launch_decode=True)
    two_launch = TritonBackend(num_sms=64)
    q, ctx = decode_case([30, 3], q_heads=4, kv_heads=2, dtype=torch.float32)
    batch = decode_batch(ctx, max_seq_len=2048)

    first = one_launch.attention(q, ctx.k_cache, ctx.v_cache, batch, HEAD_DIM**-0.5)
    second = one_launch.attention(q, ctx.k_cache, ctx.v_cache, batch, HEAD_DIM**-0.5)

    torch.testing.assert_close(
        first, two_launch.attention(q, ctx.k_cache, ctx.v_cache, batch, HEAD_DIM**-0.5)
    )
    assert torch.equal(first, second)
    (counters,) = one_launch._split_counters[q.device]
    assert counters.numel() == 4 and not counters.any()
    assert two_launch._split_counters == {}
