"""The torch reference of every kernel: what each op computes, in plain torch, with no triton.

One home per op's semantics. ``TorchBackend`` runs these functions as its operations (so the
reference is what the CPU engine serves), the kernel tests and ``bench/kernels/gpu_kernel_check.py``
judge each Triton launcher against them in fp64 (``kernels.accuracy``). Each reference declares the
launcher(s) it judges with ``@reference_of``, and ``kernels/registry.py`` builds its table from
those declarations, so a new kernel's reference and its registry entry are one edit, here.

Each function follows the rounding steps its kernel takes (Hugging Face Llama's order), and
keeps fp64 inputs in fp64 so that a test can ask for a tight reference from the same inputs.
Shapes and dtypes are those of the kernel of the same name (see its module's docstring).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from radixfair_engine.kernels.prefix_groups import PrefixGroups

Reference = TypeVar("Reference", bound=Callable[..., object])
# The attribute a declared reference carries: its LauncherTags, top decorator first.
LAUNCHER_TAGS = "__kernel_launchers__"


@dataclass(frozen=True)
class LauncherTag:
    """A Triton launcher a reference judges: ``name`` in ``kernels/<module>.py``; ``step_fusion``
    marks a cross-operation fusion (see ``registry.Kernel``)."""

    name: str
    module: str
    step_fusion: bool = False


def reference_of(
    name: str, module: str | None = None, *, step_fusion: bool = False
) -> Callable[[Reference], Reference]:
    """Declares the decorated function the reference of launcher ``name`` in ``kernels/<module>.py``
    (``module`` defaults to ``name``). The function is returned unchanged, carrying the tag;
    one reference may judge several launchers (stacked declarations, read top-down). The tag is set
    once, at definition, on the function itself: there is no table to append to here."""

    def declare(reference: Reference) -> Reference:
        tag = LauncherTag(name, module or name, step_fusion)
        setattr(reference, LAUNCHER_TAGS, (tag, *getattr(reference, LAUNCHER_TAGS, ())))
        return reference

    return declare


def _reduce_dtype(x: torch.Tensor) -> torch.dtype:
    """fp32 for the model's dtypes, fp64 when a test asks for the fp64 reference."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


@reference_of("rms_norm")
def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x [T, H] -> x / rms(x) * weight: the mean square reduced in fp32, ``x * rstd`` rounded to
    x.dtype, then multiplied by the weight (in the promoted dtype of the two)."""
    wide = x.to(_reduce_dtype(x))
    normed = (wide * torch.rsqrt(wide.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
    return weight * normed


@reference_of("add_rms_norm", "rms_norm")
def add_rms_norm_reference(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(rms_norm(x + residual), x + residual); the sum is rounded to x.dtype before the norm."""
    summed = x + residual
    return rms_norm_reference(summed, weight, eps), summed


def _rope_angles(
    positions: torch.Tensor, cos_sin: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin), each [T, 1, D/2] in ``dtype``, for the tokens at ``positions``."""
    half = cos_sin.shape[-1] // 2
    table = cos_sin[positions].to(dtype)
    return table[:, None, :half], table[:, None, half:]


def _rotate_half(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    wide = x.to(cos.dtype)
    first, second = wide[..., :half], wide[..., half:]
    return torch.cat([first * cos - second * sin, second * cos + first * sin], dim=-1).to(x.dtype)


def rope_reference(x: torch.Tensor, positions: torch.Tensor, cos_sin: torch.Tensor) -> torch.Tensor:
    """x [T, H, D] rotated out of place (rotate-half layout), in fp32 (fp64 for fp64 input),
    returned in x.dtype. ``cos_sin`` is [max_positions, D]: cos of the D/2 frequencies, then sin."""
    cos, sin = _rope_angles(positions, cos_sin, _reduce_dtype(x))
    return _rotate_half(x, cos, sin)


@reference_of("apply_rope", "rope")
def apply_rope_reference(
    q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos_sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(rope(q), rope(k)), out of place; the kernel rotates both in place."""
    cos, sin = _rope_angles(positions, cos_sin, _reduce_dtype(q))
    return _rotate_half(q, cos, sin), _rotate_half(k, cos, sin)


@reference_of("write_kv")
def write_kv_reference(
    k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """Stores k, v [T, Hkv, D] into caches [num_pages, page_size, Hkv, D] at the flat slots."""
    k_cache.view(-1, *k_cache.shape[2:])[slot_mapping] = k.to(k_cache.dtype)
    v_cache.view(-1, *v_cache.shape[2:])[slot_mapping] = v.to(v_cache.dtype)


@reference_of("rope_and_write_kv", "rope")
def rope_and_write_kv_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    positions: torch.Tensor,
    cos_sin: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> torch.Tensor:
    """Returns rope(q); the caches get rope(k) and v at the slots (k itself is not used afterwards)."""
    q, k = apply_rope_reference(q, k, positions, cos_sin)
    write_kv_reference(k, v, k_cache, v_cache, slot_mapping)
    return q


@reference_of("silu_and_mul", "swiglu")
def silu_and_mul_reference(gate_up: torch.Tensor) -> torch.Tensor:
    """gate_up [T, 2I] (gate first) -> silu(gate) * up, [T, I]."""
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


@reference_of("paged_decode_attention", "decode_attention")
@reference_of("extend_attention")
def paged_attention_reference(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    query_start_loc: list[int],
    seq_lens: list[int],
    page_table: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Causal GQA over paged K/V for a ragged batch, in q's dtype (run it on fp64 for a tight reference).

    Sequence b's queries are rows query_start_loc[b]:query_start_loc[b+1] of q [T, Hq, D],
    the last positions of its context of seq_lens[b] tokens. A sequence of length 0 gives zero
    rows. The reference of decode, extend and cascade attention; ``TorchBackend.attention``
    computes the same as one padded SDPA call per step, for speed.
    """
    page_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    group = q.shape[1] // num_kv_heads
    out = torch.zeros_like(q)
    for b, seq_len in enumerate(seq_lens):
        first, last = query_start_loc[b], query_start_loc[b + 1]
        if seq_len == 0 or first == last:
            continue
        pages = page_table[b, : -(-seq_len // page_size)].long()
        keys = k_cache[pages].flatten(0, 1)[:seq_len].repeat_interleave(group, dim=1)  # [S, Hq, D]
        values = v_cache[pages].flatten(0, 1)[:seq_len].repeat_interleave(group, dim=1)
        queries = q[first:last]
        scores = torch.einsum("qhd,khd->hqk", queries, keys) * scale
        query_pos = torch.arange(last - first, device=q.device)[:, None] + (seq_len - (last - first))
        causal = torch.arange(seq_len, device=q.device)[None, :] <= query_pos
        scores = scores.masked_fill(~causal, float("-inf"))
        out[first:last] = torch.einsum("hqk,khd->qhd", scores.softmax(dim=-1), values)
    return out


@reference_of("cascade_decode_attention")
def cascade_decode_reference(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    page_table: torch.Tensor,
    seq_lens: list[int],
    seq_prefix_len: list[int],
    prefix_row: list[int],
    scale: float,
) -> torch.Tensor:
    """The cascade's arithmetic in torch (q's dtype; run it on fp64 for a tight reference).

    Sequence b attends over its first seq_prefix_len[b] keys read from page-table row
    prefix_row[b] (its group's first member) and over the rest from its own row; the two
    softmaxes are merged by log-sum-exp. Equals plain attention exactly when the shared
    pages really are shared, which is the grouping's claim the tests hold it to.
    """
    page_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    gqa = q.shape[1] // num_kv_heads
    out = torch.zeros_like(q)

    def part(b: int, row: int, start: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        positions = torch.arange(start, end, device=q.device)
        slots = page_table[row].long()[positions // page_size] * page_size + positions % page_size
        keys = k_cache.flatten(0, 1)[slots].repeat_interleave(gqa, dim=1)  # [S, Hq, D]
        values = v_cache.flatten(0, 1)[slots].repeat_interleave(gqa, dim=1)
        scores = torch.einsum("hd,khd->hk", q[b], keys) * scale
        lse = torch.logsumexp(scores, dim=-1)  # [Hq]
        return torch.einsum("hk,khd->hd", scores.softmax(dim=-1), values), lse

    for b, seq_len in enumerate(seq_lens):
        if seq_len == 0:
            continue
        shared = seq_prefix_len[b]
        own_out, own_lse = part(b, b, shared, seq_len)
        if shared == 0:
            out[b] = own_out
            continue
        prefix_out, prefix_lse = part(b, prefix_row[b], 0, shared)
        total = torch.logaddexp(own_lse, prefix_lse)
        out[b] = own_out * (own_lse - total).exp()[:, None] + prefix_out * (prefix_lse - total).exp()[:, None]
    return out


def reference_rows(groups: PrefixGroups) -> tuple[list[int], list[int]]:
    """Host lists (seq_prefix_len, prefix_row) of ``groups`` for ``cascade_decode_reference``."""
    seq_prefix_len = groups.seq_prefix_len.tolist()
    prefix_row = list(range(len(seq_prefix_len)))
    starts, counts = groups.item_member_start.tolist(), groups.item_member_count.tolist()
    members, rows = groups.members.tolist(), groups.item_row.tolist()
    for item in range(groups.num_items):
        for member in members[starts[item] : starts[item] + counts[item]]:
            prefix_row[member] = rows[item]
    return seq_prefix_len, prefix_row


@reference_of("int8_weight_matmul", "int8_matmul")
def int8_weight_matmul_reference(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x [M, K] @ (q [N, K] int8 * scale [N])^T in fp64 from the same inputs: [M, N] float64."""
    return (x.double() @ q.double().T) * scale.double()[None, :]


@reference_of("fp8_weight_matmul", "int8_matmul")
def fp8_weight_matmul_reference(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x [M, K] @ (e4m3(q [N, K] uint8 codes, or float8_e4m3fn) * scale [N])^T in fp64: [M, N] float64."""
    values = q.view(torch.float8_e4m3fn) if q.dtype == torch.uint8 else q
    return (x.double() @ values.double().T) * scale.double()[None, :]


def fp8_activation_matmul_reference(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``fp8_weight_matmul_reference`` with each row of x first rounded to e4m3 under its own scale
    (largest magnitude -> 448; an all-zero row keeps scale 1): W8A8 fp8 with per-token dynamic
    activation scales. [M, N] float64."""
    amax = x.float().abs().amax(dim=1, keepdim=True)
    x_scale = torch.where(amax > 0, amax / 448.0, torch.ones_like(amax))
    # x times the scale's fp32 reciprocal, as the kernel computes it (not x / scale: a tie could differ).
    rounded = (x.float() * (1.0 / x_scale)).to(torch.float8_e4m3fn).double() * x_scale.double()
    return fp8_weight_matmul_reference(rounded, q, scale)


@reference_of("norm_matmul", step_fusion=True)
def norm_matmul_reference(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    norm_weight: torch.Tensor | None,
    eps: float,
    weight: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(rms_norm(x + residual) @ weight^T, x + residual) in x's dtype (fp64 operands: fp64).

    ``residual`` None: no add (the sum is x); ``norm_weight`` None: no norm (a plain product).
    """
    summed = x if residual is None else x + residual
    if norm_weight is None:
        return F.linear(summed, weight), summed
    return F.linear(rms_norm_reference(summed, norm_weight, eps), weight), summed


@reference_of("norm_gate_up_silu", "norm_matmul", step_fusion=True)
def norm_gate_up_silu_reference(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    norm_weight: torch.Tensor,
    eps: float,
    weight: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(silu_and_mul(rms_norm(x + residual) @ gate_up^T), x + residual)."""
    gate_up, summed = norm_matmul_reference(x, residual, norm_weight, eps, weight)
    return silu_and_mul_reference(gate_up), summed


@reference_of("norm_qkv_rope_write_kv", "norm_qkv_rope", step_fusion=True)
def norm_qkv_rope_reference(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    norm_weight: torch.Tensor,
    eps: float,
    qkv_weight: torch.Tensor,
    positions: torch.Tensor,
    cos_sin: torch.Tensor,
    num_kv_heads: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rotated q [T, Hq, D], rotated k [T, Hkv, D], v [T, Hkv, D], x + residual) in x's dtype."""
    head_dim = cos_sin.shape[-1]
    qkv, summed = norm_matmul_reference(x, residual, norm_weight, eps, qkv_weight)
    heads = qkv.view(x.shape[0], -1, head_dim)
    q_heads = heads.shape[1] - 2 * num_kv_heads
    q, k, v = heads.split([q_heads, num_kv_heads, num_kv_heads], dim=1)
    return rope_reference(q, positions, cos_sin), rope_reference(k, positions, cos_sin), v, summed
