import pytest
import torch

pytest.importorskip("triton")

from radixfair_engine.kernels.write_kv import write_kv  # noqa: E402


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_write_kv_fills_exactly_the_mapped_slots(dtype: torch.dtype) -> None:
    tokens, kv_heads, head_dim, num_pages, page_size = 7, 3, 16, 4, 4
    kv = torch.randn(tokens, 2, kv_heads, head_dim, dtype=dtype)
    k, v = kv[:, 0], kv[:, 1]  # strided views, as the model's split projection gives
    slots = torch.randperm(num_pages * page_size)[:tokens]
    k_cache = torch.full((num_pages, page_size, kv_heads, head_dim), float("nan"), dtype=dtype)
    v_cache = torch.full_like(k_cache, float("nan"))

    write_kv(k, v, k_cache, v_cache, slots)

    k_slots, v_slots = k_cache.view(-1, kv_heads, head_dim), v_cache.view(-1, kv_heads, head_dim)
    assert torch.equal(k_slots[slots], k) and torch.equal(v_slots[slots], v)
    untouched = torch.ones(num_pages * page_size, dtype=torch.bool)
    untouched[slots] = False
    assert k_slots[untouched].isnan().all() and v_slots[untouched].isnan().all()
