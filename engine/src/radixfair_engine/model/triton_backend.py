"""GPU kernel backend: the KernelBackend operations as our own Triton kernels.

Matrix products stay in cuBLAS (the model calls ``F.linear``) unless a fusion in
``StepFusionConfig`` is on: then a norm and the projection after it (with RoPE and the
K/V store, or SwiGLU, on its output) run as one Triton kernel for batches of up to
``max_rows`` tokens (model/step_fusion.py lists them). Everything else in a layer runs
here, RoPE and the K/V page store as one launch (``rope_and_write_kv``).
"""

from __future__ import annotations

import torch

from radixfair_engine.kernels.cascade_decode_attention import cascade_decode_attention, choose_prefix_splits
from radixfair_engine.kernels.decode_attention import (
    choose_num_splits,
    new_split_counters,
    paged_decode_attention,
)
from radixfair_engine.kernels.extend_attention import extend_attention
from radixfair_engine.kernels.int8_matmul import fp8_weight_matmul, int8_weight_matmul
from radixfair_engine.kernels.norm_matmul import norm_gate_up_silu, norm_matmul
from radixfair_engine.kernels.norm_qkv_rope import norm_qkv_rope_write_kv
from radixfair_engine.kernels.prefix_groups import PrefixGroups
from radixfair_engine.kernels.registry import kernel
from radixfair_engine.model.backend import ForwardBatch
from radixfair_engine.model.quantized_linear import QuantizedKernelConfig
from radixfair_engine.model.step_fusion import StepFusionConfig


def _launcher(name: str) -> staticmethod:  # type: ignore[type-arg]
    return staticmethod(kernel(name).launcher())


class TritonBackend:
    """Implements ``KernelBackend`` with the kernels in ``radixfair_engine.kernels``.

    ``num_sms`` sizes the decode split heuristic; it defaults to the current
    CUDA device's multiprocessor count (and to 1 on CPU, the interpreter's case).
    ``fusions`` picks the cross-operation fusions (all off by default); ``quantized`` which
    products of a quantized checkpoint run the weight-only int8/fp8 kernel.
    ``one_launch_decode``: split decode attention merges its splits in the same launch (the
    last split program merges, counted on arrival counters this backend holds); False (the
    default) keeps the separate merge kernel, two launches a layer whenever the heuristic
    splits: on the H200 one launch was correct but slower, the whole batch-1 step 1.002 ms
    against 0.953 (bench/results/gpu_decode_one_launch_h200.md).
    """

    name = "triton"
    reads_shared_prefixes = True

    # The plain operations are the kernels' launchers, as kernels/registry.py lists them.
    rms_norm = _launcher("rms_norm")
    add_rms_norm = _launcher("add_rms_norm")
    apply_rope = _launcher("apply_rope")
    # Rotates q in place and stores rotated k and v in the caches; returns q (k is left as it was).
    rope_and_write_kv = _launcher("rope_and_write_kv")
    silu_and_mul = _launcher("silu_and_mul")
    write_kv = _launcher("write_kv")

    def __init__(
        self,
        num_sms: int | None = None,
        fusions: StepFusionConfig | None = None,
        quantized: QuantizedKernelConfig | None = None,
        one_launch_decode: bool = False,
    ) -> None:
        if num_sms is None:
            num_sms = (
                torch.cuda.get_device_properties().multi_processor_count if torch.cuda.is_available() else 1
            )
        self.num_sms = num_sms
        self.fusions = fusions or StepFusionConfig()
        self.quantized = quantized or QuantizedKernelConfig()
        self.one_launch_decode = one_launch_decode
        # Per device, the largest counters so far; replaced ones stay alive, since a captured
        # CUDA graph keeps their address (freed, the allocator could hand that memory out).
        self._split_counters: dict[torch.device, list[torch.Tensor]] = {}

    def _fits(self, enabled: bool, x: torch.Tensor) -> bool:
        return enabled and 0 < x.shape[0] <= self.fusions.max_rows

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
        # Two dot tiles of D/2 columns per head need D/2 >= 16.
        if not self._fits(self.fusions.norm_into_qkv, x) or k_cache.shape[-1] < 32:
            return None
        return norm_qkv_rope_write_kv(
            x, residual, norm_weight, eps, qkv_weight, positions, cos_sin, k_cache, v_cache, slot_mapping
        )

    def norm_gate_up_silu(
        self,
        x: torch.Tensor,
        residual: torch.Tensor | None,
        norm_weight: torch.Tensor,
        eps: float,
        gate_up_weight: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        if not self._fits(self.fusions.norm_into_gate_up, x):
            return None
        return norm_gate_up_silu(x, residual, norm_weight, eps, gate_up_weight)

    def norm_lm_head(
        self,
        x: torch.Tensor,
        residual: torch.Tensor,
        norm_weight: torch.Tensor,
        eps: float,
        head_weight: torch.Tensor,
        row_indices: torch.Tensor,
    ) -> torch.Tensor | None:
        if not self._fits(self.fusions.norm_into_lm_head, row_indices):
            return None
        logits, _ = norm_matmul(
            x, residual, norm_weight, eps, head_weight, row_indices=row_indices, out_dtype=torch.float32
        )
        return logits

    def linear(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor | None:
        fusions = self.fusions
        if not self._fits(fusions.triton_small_matmul, x) or x.shape[0] > fusions.small_matmul_max_rows:
            return None
        out, _ = norm_matmul(x, None, None, 0.0, weight)
        return out

    def quantized_linear(
        self, x: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor, scheme: str
    ) -> torch.Tensor | None:
        # Shapes only: no host sync, and under a CUDA graph the choice is fixed per captured size.
        if not 0 < x.shape[0] <= self.quantized.triton_max_rows:
            return None
        matmul = int8_weight_matmul if scheme == "int8" else fp8_weight_matmul
        config = self.quantized
        return matmul(
            x, codes, scale, gemv_max_rows=config.gemv_max_rows, max_block_m=config.tile_max_block_m
        )

    def attention(
        self,
        q: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        batch: ForwardBatch,
        scale: float,
    ) -> torch.Tensor:
        if batch.is_decode_only and q.shape[0] == batch.num_sequences:
            groups = batch.prefix_groups
            if groups is not None:
                return self._cascade_decode(q, k_cache, v_cache, batch, groups, scale)
            splits = choose_num_splits(batch.num_sequences, k_cache.shape[2], batch.max_seq_len, self.num_sms)
            counters = None
            if splits > 1 and self.one_launch_decode:
                counters = self._counters(q.device, batch.num_sequences, k_cache.shape[2])
            return paged_decode_attention(
                q,
                k_cache,
                v_cache,
                batch.page_table,
                batch.seq_lens,
                scale,
                num_splits=splits,
                split_counters=counters,
            )
        return extend_attention(
            q,
            k_cache,
            v_cache,
            batch.query_start_loc,
            batch.seq_lens,
            batch.page_table,
            batch.max_query_len,
            scale,
        )

    def _counters(self, device: torch.device, batch_size: int, num_kv_heads: int) -> torch.Tensor:
        """Zeroed split-arrival counters for ``batch_size`` sequences, shared by every layer.

        Layers (and graph replays) run one after another on one stream, and each launch leaves
        the counters zero, so one set serves them all. They are allocated outside capture: the
        graph runner runs each size eagerly, largest first, before it captures it. Splits (and
        so counters) are only used while batch * Hkv < 2 * num_sms, so they stay small.
        """
        held = self._split_counters.setdefault(device, [])
        if not held or held[-1].numel() < batch_size * num_kv_heads:
            if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
                raise RuntimeError("split-decode counters must be allocated before CUDA graph capture")
            held.append(new_split_counters(batch_size, num_kv_heads, device))
        return held[-1]

    def _cascade_decode(
        self,
        q: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        batch: ForwardBatch,
        groups: PrefixGroups,
        scale: float,
    ) -> torch.Tensor:
        """Decode with each group's shared prefix read once (kernels.cascade_decode_attention)."""
        num_kv_heads = k_cache.shape[2]
        own_splits = choose_num_splits(batch.num_sequences, num_kv_heads, groups.max_own_len, self.num_sms)
        prefix_splits = choose_prefix_splits(
            groups.num_items, num_kv_heads, groups.max_prefix_len, self.num_sms
        )
        return cascade_decode_attention(
            q,
            k_cache,
            v_cache,
            batch.page_table,
            batch.seq_lens,
            groups,
            scale,
            num_splits=own_splits,
            prefix_splits=prefix_splits,
            concurrent=groups.concurrent_parts,
        )
