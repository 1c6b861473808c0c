"""Which of the Triton backend's cross-operation fusions run (issue 14, part 2: fewer kernels per step).

Unfused, a Llama layer is 9 launches at decode (add_rms_norm, QKV GEMM, rope_and_write_kv,
attention, o_proj GEMM, add_rms_norm, gate/up GEMM, silu_and_mul, down GEMM) and the step ends
with 5 more (add, row gather, rms_norm, LM head GEMM, cast to fp32). With every fusion on a
layer is 5 launches and the end 1:

- ``norm_into_qkv``: add + RMSNorm + QKV projection + RoPE + K/V page store in one kernel
  (kernels/norm_qkv_rope.py).
- ``norm_into_gate_up``: add + RMSNorm + gate/up projection + SwiGLU in one kernel
  (kernels/norm_matmul.norm_gate_up_silu).
- ``norm_into_lm_head``: final add + row gather + RMSNorm + LM head, fp32 logits, one kernel.
- ``triton_small_matmul``: o_proj and down_proj through the Triton small-M matmul instead of
  cuBLAS (no launch saved; only pays where cuBLAS is latency-bound).

The fused kernels replace cuBLAS with our own Triton GEMM, so each is off by default until a GPU
run (bench/kernels/gpu_step_fusion_bench.py) shows it pays. ``max_rows`` bounds the rows (tokens) a
fused call takes: larger batches (prefill) keep cuBLAS and the separate kernels. 128 is the
largest batch the bench measures; raise it only with a measurement at the larger size.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StepFusionConfig:
    norm_into_qkv: bool = False
    norm_into_gate_up: bool = False
    norm_into_lm_head: bool = False
    triton_small_matmul: bool = False
    max_rows: int = 128
    # cuBLAS is latency-bound only at the smallest batches; above this it keeps o_proj/down_proj.
    small_matmul_max_rows: int = 128

    def __post_init__(self) -> None:
        if self.max_rows < 1 or self.small_matmul_max_rows < 1:
            raise ValueError(f"max_rows must be >= 1, got {self.max_rows}, {self.small_matmul_max_rows}")

    @classmethod
    def all_on(cls, max_rows: int = 128) -> StepFusionConfig:
        return cls(True, True, True, True, max_rows, max_rows)
