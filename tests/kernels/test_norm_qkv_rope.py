"""add + RMSNorm + QKV projection + RoPE + K/V page store as one kernel, in the CPU interpreter.

The outputs are checked where the model reads them: q returned, rotated k and v in their cache
slots, every other slot untouched, and the residual stream's sum.
"""

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

from radixfair_engine.kernels.accuracy import TOLERANCE, poisoned_like, relative_error  # noqa: E402
from radixfair_engine.kernels.norm_qkv_rope import norm_qkv_rope_write_kv  # noqa: E402
from radixfair_engine.kernels.reference import norm_qkv_rope_reference  # noqa: E402
from radixfair_engine.kernels.rms_norm import add_rms_norm  # noqa: E402
from radixfair_engine.kernels.rope import rope_and_write_kv  # noqa: E402

EPS = 1e-5
PAGE_SIZE, NUM_PAGES = 4, 8


def rope_table(head_dim: int, positions: int = 64) -> torch.Tensor:
    inv_freq = 1.0 / 10000 ** (torch.arange(0, head_dim, 2).float() / head_dim)
    freqs = torch.outer(torch.arange(positions).float(), inv_freq)
    return torch.cat([freqs.cos(), freqs.sin()], dim=-1)


def problem(tokens: int, hidden: int, q_heads: int, kv_heads: int, head_dim: int, dtype: torch.dtype) -> dict:
    generator = torch.Generator().manual_seed(tokens * 7 + hidden)
    rows = (q_heads + 2 * kv_heads) * head_dim
    # Ragged: tokens at scattered positions, written to scattered (not consecutive) cache slots.
    slots = torch.randperm(NUM_PAGES * PAGE_SIZE, generator=generator)[:tokens]
    return {
        "x": torch.randn(tokens, hidden, generator=generator).to(dtype),
        "residual": torch.randn(tokens, hidden, generator=generator).to(dtype),
        "norm_weight": (1 + 0.3 * torch.randn(hidden, generator=generator)).to(dtype),
        "qkv_weight": (torch.randn(rows, hidden, generator=generator) / hidden**0.5).to(dtype),
        "positions": torch.randint(0, 64, (tokens,), generator=generator),
        "cos_sin": rope_table(head_dim),
        "k_cache": poisoned_like(torch.empty(NUM_PAGES, PAGE_SIZE, kv_heads, head_dim, dtype=dtype)),
        "v_cache": poisoned_like(torch.empty(NUM_PAGES, PAGE_SIZE, kv_heads, head_dim, dtype=dtype)),
        "slot_mapping": slots.to(torch.int64),
    }


# (T, hidden, Hq, Hkv, D): one decode token; a ragged batch with K not a multiple of 64; SmolLM2's
# hidden 576 with 3:1 GQA and D = 64 over more tokens than one row tile.
SHAPES = [(1, 64, 2, 1, 32), (5, 100, 4, 2, 32), (19, 576, 3, 1, 64)]


@pytest.mark.parametrize("shape", SHAPES)
def test_q_the_cached_k_v_and_the_sum_match_fp64_reference_in_fp32(shape: tuple[int, ...]) -> None:
    tokens, hidden, q_heads, kv_heads, head_dim = shape
    p = problem(*shape, torch.float32)
    q_out, summed_out = poisoned_like(torch.empty(tokens, q_heads, head_dim)), poisoned_like(p["x"])

    q, summed = norm_qkv_rope_write_kv(**p, eps=EPS, q_out=q_out, summed_out=summed_out)

    ref_q, ref_k, ref_v, ref_sum = norm_qkv_rope_reference(
        p["x"].double(), p["residual"].double(), p["norm_weight"].double(), EPS,
        p["qkv_weight"].double(), p["positions"], p["cos_sin"], kv_heads,
    )  # fmt: skip
    slots = p["slot_mapping"]
    k_slots = p["k_cache"].view(-1, kv_heads, head_dim)
    v_slots = p["v_cache"].view(-1, kv_heads, head_dim)
    assert q.data_ptr() == q_out.data_ptr()
    assert relative_error(q, ref_q) < TOLERANCE[torch.float32]
    assert relative_error(k_slots[slots], ref_k) < TOLERANCE[torch.float32]
    assert relative_error(v_slots[slots], ref_v) < TOLERANCE[torch.float32]
    assert relative_error(summed, ref_sum) < TOLERANCE[torch.float32]
    untouched = torch.ones(k_slots.shape[0], dtype=torch.bool)
    untouched[slots] = False
    assert k_slots[untouched].isnan().all() and v_slots[untouched].isnan().all()


@pytest.mark.parametrize("shape", SHAPES)
def test_bf16_equals_the_unfused_add_rms_norm_projection_and_rope_and_write_kv(
    shape: tuple[int, ...],
) -> None:
    tokens, hidden, q_heads, kv_heads, head_dim = shape
    p = problem(*shape, torch.bfloat16)
    k_expected, v_expected = p["k_cache"].clone(), p["v_cache"].clone()

    q, summed = norm_qkv_rope_write_kv(**p, eps=EPS)

    normed, expected_sum = add_rms_norm(p["x"], p["residual"], p["norm_weight"], EPS)
    qkv = F.linear(normed.double(), p["qkv_weight"].double()).to(torch.bfloat16)
    heads = qkv.view(tokens, -1, head_dim)
    q_ref, k_ref, v_ref = heads.split([q_heads, kv_heads, kv_heads], dim=1)
    q_ref = rope_and_write_kv(
        q_ref.clone(), k_ref, v_ref, p["positions"], p["cos_sin"], k_expected, v_expected, p["slot_mapping"]
    )
    slots = p["slot_mapping"]
    # The interpreter truncates fp32 -> bf16 (see test_norm_matmul.CHAIN_TOLERANCE): one ulp, 2^-7.
    assert torch.equal(summed, expected_sum)
    assert relative_error(q, q_ref) < TOLERANCE[torch.bfloat16]
    for cache, expected in ((p["k_cache"], k_expected), (p["v_cache"], v_expected)):
        got = cache.view(-1, kv_heads, head_dim)[slots]
        assert relative_error(got, expected.view(-1, kv_heads, head_dim)[slots]) < TOLERANCE[torch.bfloat16]


def test_without_a_residual_the_first_layer_returns_x_as_the_stream() -> None:
    p = problem(3, 64, 2, 1, 32, torch.float32)
    p["residual"] = None

    q, summed = norm_qkv_rope_write_kv(**p, eps=EPS)

    ref_q, *_ = norm_qkv_rope_reference(
        p["x"].double(), None, p["norm_weight"].double(), EPS, p["qkv_weight"].double(),
        p["positions"], p["cos_sin"], 1,
    )  # fmt: skip
    assert summed.data_ptr() == p["x"].data_ptr()
    assert relative_error(q, ref_q) < TOLERANCE[torch.float32]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"qkv_weight": torch.randn(5 * 32 + 1, 64)}, "rows"),
        ({"k_cache": torch.zeros(8, 4, 1, 16), "v_cache": torch.zeros(8, 4, 1, 16)}, "head_dim"),
        ({"cos_sin": rope_table(32).double()}, "cos_sin"),
        ({"positions": torch.zeros(2, dtype=torch.int64)}, "positions"),
        ({"v_cache": torch.zeros(8, 4, 2, 32)}, "caches"),
        ({"residual": torch.randn(2, 64)}, "residual"),
    ],
)
def test_bad_operands_are_refused_before_launch(change: dict, message: str) -> None:
    p = problem(3, 64, 3, 1, 32, torch.float32)
    p.update(change)
    with pytest.raises(ValueError, match=message):
        norm_qkv_rope_write_kv(**p, eps=EPS)


def test_rows_of_x_and_the_residual_are_read_through_their_strides() -> None:
    p = problem(6, 64, 2, 1, 32, torch.float32)
    wide_x, wide_residual = torch.randn(6, 200), torch.randn(6, 130)
    wide_x[:, 10:74], wide_residual[:, :64] = p["x"], p["residual"]
    expected = norm_qkv_rope_reference(
        p["x"].double(), p["residual"].double(), p["norm_weight"].double(), EPS,
        p["qkv_weight"].double(), p["positions"], p["cos_sin"], 1,
    )  # fmt: skip
    p["x"], p["residual"] = wide_x[:, 10:74], wide_residual[:, :64]

    q, summed = norm_qkv_rope_write_kv(**p, eps=EPS)

    assert relative_error(q, expected[0]) < TOLERANCE[torch.float32]
    assert (
        relative_error(p["k_cache"].view(-1, 1, 32)[p["slot_mapping"]], expected[1])
        < TOLERANCE[torch.float32]
    )
    assert relative_error(summed, expected[3]) < TOLERANCE[torch.float32]


def test_heads_split_into_16_column_parts_match_fp64_reference() -> None:
    # The GPU default for small batches: 64-wide heads as two programs of 16 columns per half.
    p = problem(5, 128, 3, 1, 64, torch.float32)

    q, _ = norm_qkv_rope_write_kv(**p, eps=EPS, part=16)

    ref_q, ref_k, ref_v, _ = norm_qkv_rope_reference(
        p["x"].double(), p["residual"].double(), p["norm_weight"].double(), EPS,
        p["qkv_weight"].double(), p["positions"], p["cos_sin"], 1,
    )  # fmt: skip
    slots = p["slot_mapping"]
    assert relative_error(q, ref_q) < TOLERANCE[torch.float32]
    assert relative_error(p["k_cache"].view(-1, 1, 64)[slots], ref_k) < TOLERANCE[torch.float32]
    assert relative_error(p["v_cache"].view(-1, 1, 64)[slots], ref_v) < TOLERANCE[torch.float32]


def test_a_part_that_does_not_divide_the_half_head_is_refused() -> None:
    p = problem(2, 64, 2, 1, 64, torch.float32)
    with pytest.raises(ValueError, match="part"):
        norm_qkv_rope_write_kv(**p, eps=EPS, part=24)
