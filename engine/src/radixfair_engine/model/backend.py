"""The seam between the Llama module and the kernels that run it.

The model calls only these operations for everything that is not a matrix
product; the matrix products stay ``torch.nn.functional.linear`` (cuBLAS on
the GPU, oneDNN/MKL on the CPU). ``TorchBackend`` is the reference and runs
anywhere; a GPU backend made of Triton kernels implements the same protocol.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import torch

if TYPE_CHECKING:
    from radixfair_engine.kernels.prefix_groups import PrefixGroups


@dataclass
class ForwardBatch:
    """One engine step: B sequences, T new tokens in total, packed ragged.

    Sequence b's new tokens are rows ``query_start_loc[b]:query_start_loc[b+1]``
    of every [T, ...] tensor. Its context after this step is ``seq_lens[b]``
    tokens, the new ones last, stored in pages ``page_table[b, :]``.
    """

    input_ids: torch.Tensor  # [T] int64
    positions: torch.Tensor  # [T] int64, position of each new token in its sequence
    query_start_loc: torch.Tensor  # [B + 1] int32, cumulative new-token counts
    seq_lens: torch.Tensor  # [B] int32, context length including the new tokens
    page_table: torch.Tensor  # [B, max_pages] int32, padded with 0
    slot_mapping: torch.Tensor  # [T] int64, page * page_size + offset of each new token's K/V
    logits_indices: torch.Tensor  # [S] int64, rows of T whose next-token logits are needed
    max_query_len: int
    max_seq_len: int
    # Host copies, so the torch backend's per-sequence loop needs no device sync.
    query_lens_host: list[int]
    seq_lens_host: list[int]
    # Decode only: sequences sharing leading pages, for a backend that reads a shared prefix once
    # per group (``reads_shared_prefixes``); None when no group pays or the batch is not decode.
    prefix_groups: PrefixGroups | None = None
    # Per-batch precomputations a backend derives once and reuses in every layer.
    backend_cache: dict[str, Any] = field(default_factory=dict)

    @property
    def num_sequences(self) -> int:
        return len(self.seq_lens_host)

    @property
    def is_decode_only(self) -> bool:
        return self.max_query_len == 1


class KernelBackend(Protocol):
    name: str
    # True when ``attention`` uses ``ForwardBatch.prefix_groups``; the runner finds groups only then.
    reads_shared_prefixes: bool

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        """x [T, H] -> x / rms(x) * weight, reduced in fp32, output in x.dtype."""
        ...

    def add_rms_norm(
        self, x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (rms_norm(x + residual), x + residual); both [T, H] in x.dtype."""
        ...

    def apply_rope(
        self, q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos_sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotates q [T, Hq, D] and k [T, Hkv, D] (Llama's rotate-half layout).

        ``cos_sin`` is [max_positions, D] fp32: cos in the first D/2 columns,
        sin in the last D/2. May work in place; returns the rotated tensors.
        """
        ...

    def rope_and_write_kv(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        positions: torch.Tensor,
        cos_sin: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        slot_mapping: torch.Tensor,
    ) -> torch.Tensor:
        """apply_rope then write_kv in one pass: returns rotated q; the caches get rotated k and v.

        Only the cache copy of k is used afterwards, so k itself may be left unrotated.
        """
        ...

    def silu_and_mul(self, gate_up: torch.Tensor) -> torch.Tensor:
        """gate_up [T, 2I] (gate first) -> silu(gate) * up, [T, I]."""
        ...

    def write_kv(
        self,
        k: torch.Tensor,
        v: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        slot_mapping: torch.Tensor,
    ) -> None:
        """Stores k, v [T, Hkv, D] into caches [num_pages, page_size, Hkv, D] at the flat slots."""
        ...

    # Fused forms. Each returns None when this backend does not fuse that call (the op is off, or
    # the batch is too large for it); the model then runs the unfused operations above, which stay
    # the reference. ``residual`` None means no residual add (the first layer); the returned sum
    # is then x itself.

    def norm_qkv_rope_write_kv(
        self,
        x: torch.Tensor,
        residual: torch.Tensor | None,
        norm_weight: torch.Tensor,
        eps: float,
        qkv_weight: torch.Tensor,
        positions: torch.Tensor,
        cos_sin: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        slot_mapping: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """add_rms_norm, the QKV projection and rope_and_write_kv: (q [T, Hq, D], x + residual)."""
        ...

    def norm_gate_up_silu(
        self,
        x: torch.Tensor,
        residual: torch.Tensor | None,
        norm_weight: torch.Tensor,
        eps: float,
        gate_up_weight: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """add_rms_norm, the gate/up projection and silu_and_mul: ([T, I], x + residual)."""
        ...

    def norm_lm_head(
        self,
        x: torch.Tensor,
        residual: torch.Tensor,
        norm_weight: torch.Tensor,
        eps: float,
        head_weight: torch.Tensor,
        row_indices: torch.Tensor,
    ) -> torch.Tensor | None:
        """rms_norm((x + residual)[row_indices]) @ head^T, rounded to x.dtype, as [S, vocab] fp32."""
        ...

    def linear(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor | None:
        """x [T, K] @ weight [N, K]^T, or None to leave it to F.linear."""
        ...

    def quantized_linear(
        self, x: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor, scheme: str
    ) -> torch.Tensor | None:
        """x [T, K] @ (codes [N, K] * scale [N] fp32)^T in x.dtype, or None to leave it to QuantizedLinear.

        ``codes`` are int8 (scheme "int8") or fp8 e4m3 bytes as uint8 (scheme "fp8").
        """
        ...

    def attention(
        self,
        q: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        batch: ForwardBatch,
        scale: float,
    ) -> torch.Tensor:
        """Causal GQA attention of the new tokens over each sequence's paged context.

        q [T, Hq, D]; caches [num_pages, page_size, Hkv, D] already hold this
        step's K/V. Query i of sequence b sits at position
        ``seq_lens[b] - query_len[b] + i`` and sees keys 0..that position.
        Returns [T, Hq, D].
        """
        ...
