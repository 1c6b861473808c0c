import pytest
import torch

pytest.importorskip("triton")

from radixfair_engine.kernels.accuracy import TOLERANCE, poisoned_like, relative_error  # noqa: E402
from radixfair_engine.kernels.decode_attention import choose_num_splits, paged_decode_attention  # noqa: E402
from radixfair_engine.kernels.paged_fixtures import random_paged_context  # noqa: E402
from radixfair_engine.kernels.reference import paged_attention_reference  # noqa: E402

Q_HEADS, KV_HEADS, HEAD_DIM, PAGE_SIZE = 6, 2, 16, 4  # a group of 3: not a power of two
# One-token context; exactly one page; one past a page boundary; several tiles, ragged.
SEQ_LENS = [1, 4, 5, 37, 50]


def run_decode(dtype: torch.dtype, seq_lens: list[int], num_splits: int) -> tuple[float, torch.Tensor]:
    # A zero-length sequence is a padding row (as CUDA-graph batches have): no context, no new token.
    ctx = random_paged_context(seq_lens, [min(1, s) for s in seq_lens], KV_HEADS, HEAD_DIM, PAGE_SIZE, dtype)
    q = torch.randn(len(seq_lens), Q_HEADS, HEAD_DIM, dtype=dtype)
    out = poisoned_like(q)
    scale = HEAD_DIM**-0.5

    paged_decode_attention(
        q,
        ctx.k_cache,
        ctx.v_cache,
        ctx.page_table,
        ctx.seq_lens,
        scale,
        out=out,
        num_splits=num_splits,
        block_n=16,
    )

    ref = paged_attention_reference(
        q.double(),
        ctx.k_cache.double(),
        ctx.v_cache.double(),
        list(range(len(seq_lens) + 1)),  # row b is sequence b's token
        seq_lens,
        ctx.page_table,
        scale,
    )
    return relative_error(out, ref), out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("num_splits", [1, 4])
def test_decode_attention_matches_fp64_reference_on_a_ragged_batch(
    dtype: torch.dtype, num_splits: int
) -> None:
    error, _ = run_decode(dtype, SEQ_LENS, num_splits)
    assert error < TOLERANCE[dtype]


@pytest.mark.parametrize("num_splits", [1, 2])
def test_a_zero_length_padding_sequence_gets_a_zero_row(num_splits: int) -> None:
    error, out = run_decode(torch.float32, [9, 0, 3], num_splits)
    assert error < TOLERANCE[torch.float32]
    assert torch.equal(out[1], torch.zeros_like(out[1]))


def test_more_splits_than_tiles_leaves_the_empty_splits_out() -> None:
    error, _ = run_decode(torch.float32, [3, 17], num_splits=8)
    assert error < TOLERANCE[torch.float32]


def test_split_choice_fills_the_gpu_but_keeps_two_128_key_tiles_per_split() -> None:
    assert choose_num_splits(batch=1, num_kv_heads=3, max_seq_len=1024, num_sms=132) == 4
    assert choose_num_splits(batch=128, num_kv_heads=3, max_seq_len=1024, num_sms=132) == 1
    assert choose_num_splits(batch=1, num_kv_heads=3, max_seq_len=100, num_sms=132) == 1
