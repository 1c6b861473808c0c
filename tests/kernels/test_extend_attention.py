import pytest
import torch

pytest.importorskip("triton")

from radixfair_engine.kernels.accuracy import TOLERANCE, poisoned_like, relative_error  # noqa: E402
from radixfair_engine.kernels.extend_attention import extend_attention  # noqa: E402
from radixfair_engine.kernels.paged_fixtures import random_paged_context  # noqa: E402
from radixfair_engine.kernels.reference import paged_attention_reference  # noqa: E402

Q_HEADS, KV_HEADS, HEAD_DIM, PAGE_SIZE = 6, 2, 16, 4

# (context after the step, new tokens): a fresh prompt; a chunk resuming from a cached
# prefix; a decode row; a one-token prompt; a chunk longer than one 16-row block whose
# prefix ends mid-page.
MIXED_BATCH = [(7, 7), (14, 5), (13, 1), (1, 1), (23, 20)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_extend_attention_is_causal_over_cached_prefix_and_new_tokens(dtype: torch.dtype) -> None:
    seq_lens = [s for s, _ in MIXED_BATCH]
    query_lens = [q for _, q in MIXED_BATCH]
    ctx = random_paged_context(seq_lens, query_lens, KV_HEADS, HEAD_DIM, PAGE_SIZE, dtype)
    q = torch.randn(sum(query_lens), Q_HEADS, HEAD_DIM, dtype=dtype)
    out = poisoned_like(q)
    scale = HEAD_DIM**-0.5

    extend_attention(
        q,
        ctx.k_cache,
        ctx.v_cache,
        ctx.query_start_loc,
        ctx.seq_lens,
        ctx.page_table,
        max(query_lens),
        scale,
        out=out,
        block_m=16,
        block_n=16,
    )

    ref = paged_attention_reference(
        q.double(),
        ctx.k_cache.double(),
        ctx.v_cache.double(),
        ctx.query_start_host,
        seq_lens,
        ctx.page_table,
        scale,
    )
    assert relative_error(out, ref) < TOLERANCE[dtype]


def test_extend_attention_rejects_int64_metadata() -> None:
    ctx = random_paged_context([4], [4], KV_HEADS, HEAD_DIM, PAGE_SIZE, torch.float32)
    q = torch.randn(4, Q_HEADS, HEAD_DIM)
    with pytest.raises(ValueError, match="int32"):
        extend_attention(
            q, ctx.k_cache, ctx.v_cache, ctx.query_start_loc.long(), ctx.seq_lens, ctx.page_table, 4, 1.0
        )
