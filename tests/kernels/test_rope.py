import pytest
import torch

pytest.importorskip("triton")

from kernels.rope_inputs import HEAD_DIM, KV_HEADS, MAX_POSITIONS, fused_qkv, rope_table  # noqa: E402

from radixfair_engine.kernels.accuracy import TOLERANCE, relative_error  # noqa: E402
from radixfair_engine.kernels.reference import rope_reference  # noqa: E402
from radixfair_engine.kernels.rope import apply_rope, rope_and_write_kv  # noqa: E402

DTYPES = [torch.float32, torch.bfloat16]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tokens", [1, 11])
def test_apply_rope_rotates_q_and_k_in_place_at_each_tokens_position(dtype: torch.dtype, tokens: int) -> None:
    q, k, _ = fused_qkv(tokens, dtype)
    positions = torch.randint(0, MAX_POSITIONS, (tokens,))  # a ragged batch: positions in no order
    table = rope_table()
    expected_q = rope_reference(q.double(), positions, table.double())
    expected_k = rope_reference(k.double(), positions, table.double())

    out_q, out_k = apply_rope(q, k, positions, table)

    assert out_q.data_ptr() == q.data_ptr() and out_k.data_ptr() == k.data_ptr()
    assert relative_error(q, expected_q) < TOLERANCE[dtype]
    assert relative_error(k, expected_k) < TOLERANCE[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
def test_rope_and_write_kv_stores_rotated_k_and_v_only_in_their_slots(dtype: torch.dtype) -> None:
    tokens, num_pages, page_size = 9, 5, 4
    q, k, v = fused_qkv(tokens, dtype)
    k_before = k.clone()
    positions = torch.randint(0, MAX_POSITIONS, (tokens,))
    slots = torch.randperm(num_pages * page_size)[:tokens]  # scattered over pages, crossing boundaries
    table = rope_table()
    k_cache = torch.full((num_pages, page_size, KV_HEADS, HEAD_DIM), float("nan"), dtype=dtype)
    v_cache = torch.full_like(k_cache, float("nan"))
    expected_q = rope_reference(q.double(), positions, table.double())
    expected_k = rope_reference(k.double(), positions, table.double())

    rope_and_write_kv(q, k, v, positions, table, k_cache, v_cache, slots)

    k_slots, v_slots = k_cache.view(-1, KV_HEADS, HEAD_DIM), v_cache.view(-1, KV_HEADS, HEAD_DIM)
    assert relative_error(q, expected_q) < TOLERANCE[dtype]
    assert relative_error(k_slots[slots], expected_k) < TOLERANCE[dtype]
    assert torch.equal(v_slots[slots], v)
    assert torch.equal(k, k_before)
    untouched = torch.ones(num_pages * page_size, dtype=torch.bool)
    untouched[slots] = False
    assert k_slots[untouched].isnan().all() and v_slots[untouched].isnan().all()


def test_position_zero_leaves_a_head_unchanged() -> None:
    q, k, _ = fused_qkv(3, torch.float32)
    q_before, k_before = q.clone(), k.clone()

    apply_rope(q, k, torch.zeros(3, dtype=torch.int64), rope_table())

    assert torch.equal(q, q_before) and torch.equal(k, k_before)


def test_rope_rejects_a_table_of_another_head_dim() -> None:
    q, k, _ = fused_qkv(2, torch.float32)
    with pytest.raises(ValueError, match="cos_sin"):
        apply_rope(q, k, torch.zeros(2, dtype=torch.int64), rope_table(head_dim=8))
