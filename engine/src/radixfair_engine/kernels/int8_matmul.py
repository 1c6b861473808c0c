# ruff: noqa: N803  (Triton's convention: compile-time tl.constexpr parameters are UPPER_CASE)
"""Weight-only int8 / fp8 matmul for decode-sized batches: y = x @ (q * scale[:, None])^T.

Shapes and dtypes:
  x       [M, K] bf16/fp16/fp32, last dimension contiguous (M = decode batch, 1 to a few hundred)
  q       [N, K], contiguous: the checkpoint's quantized weight (format: see
          radixfair_model_format.quantized_checkpoint), either
          - int8 (``int8_weight_matmul``): symmetric, per output channel, values in [-127, 127], or
          - fp8 e4m3 codes held as uint8 (``fp8_weight_matmul``): the bytes of a float8_e4m3fn tensor,
            as the worker's QuantizedLinear keeps them (a uint8 view survives Module.to(dtype))
  scale   [N] fp32: the per-output-channel scale
  returns [M, N] in x.dtype

At decode a projection is bound by reading its weight, and 8-bit codes halve those bytes against
bf16. The weight tile is loaded as 8-bit codes and converted to the activation dtype in registers
(fp8: bitcast to e4m3, then converted), so no dequantized copy of the weight ever exists in
memory; both conversions are exact (|q| <= 127 is exact in bf16/fp16, and every finite e4m3
value is a bf16 and an fp16 value). The tile product accumulates in fp32 on the tensor cores,
and the per-channel scale is applied once to the accumulated output column
(x @ (q * s)^T == (x @ q^T) * s), then the result is rounded to x.dtype.

Two kernels, chosen by the row count (``gemv_max_rows``, from QuantizedKernelConfig):

- the tile kernel: each program owns a BLOCK_M x BLOCK_N output tile and walks K in BLOCK_K steps
  through ``tl.dot``. ``tl.dot`` needs at least 16 rows, so a batch of 1 pads to 16 rows in
  registers. Small N (SmolLM2's 576-wide projections) gets narrow tiles so that enough programs run.
- the GEMV kernel, for a handful of rows: one program per (BLOCK_N output channels, row), each
  loading its channels' whole K (up to 2,048) in one step and reducing with ``tl.sum``, no
  ``tl.dot``. Why a second kernel: in a decode step the weights come from DRAM (30 layers' weights
  are 2-4x the L2), where a kernel's time is set by how many bytes it has in flight, not by its
  arithmetic. The tile kernel at batch 1 runs N / 16 programs (36 for SmolLM2's o_proj and
  down_proj, on 132 SMs), each streaming BLOCK_K-wide steps one after another; the GEMV kernel runs
  N / 4 programs that each request all of their weight bytes at once. The H200 per-product table
  that placed the tile kernel ahead of cuBLAS (2.7-4.2 us against 3.1-4.4) timed replays of one
  weight, which then sits in the L2; the whole decode step did not get faster (1.03 against 1.02 ms)
  although a quantized step issues no op but these kernels beyond the bf16 step's
  (tests/kernels/test_int8_decode_step_ops.py), which leaves the kernel's time with cold weights.
  The GEMV kernel's products are exact in fp32 (8-bit codes times bf16) and summed in fp32, so
  both kernels give the same result up to the order of fp32 additions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from radixfair_engine.kernels._launch import check_last_dim_contiguous, interpreted, output_buffer

E4M3_MAX = tl.constexpr(448.0)  # float8_e4m3fn's largest finite value


@triton.jit
def _round_to_e4m3(v):
    """fp32 ``v`` (|v| <= 448) rounded to nearest, ties to even, onto e4m3's grid, still in fp32, so
    the conversion after it is exact. Normal values keep 3 mantissa bits, rounded on the bit pattern
    (a carry runs into the exponent as it should); below 2^-6, e4m3's subnormals are multiples of
    2^-9, which adding and taking away 1.5 * 2^14 rounds to (the fp32 spacing there is 2^-9). Done
    here for every backend: Triton's CPU interpreter drops the exponent carry when it converts
    (127.7 -> 64) and truncates subnormals."""
    bits = v.to(tl.int32, bitcast=True)
    bits = bits + 0x7FFFF + ((bits >> 20) & 1)
    normal = (bits & -0x100000).to(tl.float32, bitcast=True)
    subnormal = (v + 24576.0) - 24576.0
    return tl.where(tl.abs(v) < 0.015625, subnormal, normal)


@triton.jit
def _weight_only_matmul_kernel(
    x_ptr,
    q_ptr,
    scale_ptr,
    out_ptr,
    M,
    N,
    K,
    x_stride,
    q_stride,
    out_stride,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    EVEN_K: tl.constexpr,
    DOT_FP32: tl.constexpr,
    FP8_CODES: tl.constexpr,
    WEIGHT_ROWS: tl.constexpr,
    FP8_ACTIVATIONS: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < M
    col_mask = cols < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    x_rows = x_ptr + rows.to(tl.int64)[:, None] * x_stride
    if FP8_ACTIVATIONS:
        # Per-row (per-token) scale: the row's largest magnitude maps to e4m3's largest finite value.
        amax = tl.zeros((BLOCK_M,), dtype=tl.float32)
        for k_start in range(0, K, BLOCK_K):
            ks = k_start + tl.arange(0, BLOCK_K)
            x = tl.load(x_rows + ks[None, :], mask=row_mask[:, None] & (ks < K)[None, :], other=0.0)
            amax = tl.maximum(amax, tl.max(tl.abs(x.to(tl.float32)), axis=1))
        x_scale = tl.where(amax > 0.0, amax / E4M3_MAX, 1.0)
        x_inverse = 1.0 / x_scale
    # The weight tile as the dot wants it, [BLOCK_K, BLOCK_N] of q[cols, ks]: addressed transposed, or
    # (WEIGHT_ROWS) loaded [BLOCK_N, BLOCK_K] as stored and transposed in registers, which lays the
    # loads out along K, the weight's contiguous dimension.
    q_cols = q_ptr + cols.to(tl.int64)[None, :] * q_stride
    q_rows = q_ptr + cols.to(tl.int64)[:, None] * q_stride
    for k_start in range(0, K, BLOCK_K):
        ks = k_start + tl.arange(0, BLOCK_K)
        if EVEN_K:
            # K a multiple of BLOCK_K (SmolLM2's 1536 at 128, 576 at 64): no K mask on the hot loop.
            x = tl.load(x_rows + ks[None, :], mask=row_mask[:, None], other=0.0)
            if WEIGHT_ROWS:
                q = tl.trans(tl.load(q_rows + ks[None, :], mask=col_mask[:, None], other=0))
            else:
                q = tl.load(q_cols + ks[:, None], mask=col_mask[None, :], other=0)
        else:
            k_mask = ks < K
            x = tl.load(x_rows + ks[None, :], mask=row_mask[:, None] & k_mask[None, :], other=0.0)
            if WEIGHT_ROWS:
                q = tl.trans(tl.load(q_rows + ks[None, :], mask=col_mask[:, None] & k_mask[None, :], other=0))
            else:
                q = tl.load(q_cols + ks[:, None], mask=col_mask[None, :] & k_mask[:, None], other=0)
        if FP8_CODES:
            # uint8 bytes -> e4m3 values (code 0, the masked fill, is +0.0).
            q = q.to(tl.float8e4nv, bitcast=True)
        if FP8_ACTIVATIONS:
            # Both operands e4m3: the product runs on the fp8 MMA, accumulating in fp32.
            x8 = _round_to_e4m3(x.to(tl.float32) * x_inverse[:, None]).to(tl.float8e4nv)
            if DOT_FP32:
                # Every e4m3 value is exact in fp32: the interpreter computes the same products.
                acc += tl.dot(x8.to(tl.float32), q.to(tl.float32), input_precision="ieee")
            else:
                acc += tl.dot(x8, q)
        elif DOT_FP32:
            # fp32 activations, and the CPU interpreter (whose bf16 dot is wrong, see _launch.interpreted).
            acc += tl.dot(x.to(tl.float32), q.to(tl.float32), input_precision="ieee")
        else:
            # int8 and e4m3 values are exact in bf16 and fp16: the conversion loses nothing.
            acc += tl.dot(x, q.to(x.dtype))
    scale = tl.load(scale_ptr + cols, mask=col_mask, other=0.0)
    acc = acc * scale[None, :]
    if FP8_ACTIVATIONS:
        acc = acc * x_scale[:, None]
    out_ptrs = out_ptr + rows.to(tl.int64)[:, None] * out_stride + cols[None, :]
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=row_mask[:, None] & col_mask[None, :])


@triton.jit
def _weight_only_gemv_kernel(
    x_ptr,
    q_ptr,
    scale_ptr,
    out_ptr,
    N,
    K,
    x_stride,
    q_stride,
    out_stride,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    FP8_CODES: tl.constexpr,
):
    # Grid (cdiv(N, BLOCK_N), M): a row's programs re-read the weight the first row's pulled into L2.
    row = tl.program_id(1).to(tl.int64)
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_mask = cols < N
    q_rows = q_ptr + cols.to(tl.int64)[:, None] * q_stride
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for k_start in range(0, K, BLOCK_K):
        ks = k_start + tl.arange(0, BLOCK_K)
        k_mask = ks < K
        x = tl.load(x_ptr + row * x_stride + ks, mask=k_mask, other=0.0).to(tl.float32)
        q = tl.load(q_rows + ks[None, :], mask=col_mask[:, None] & k_mask[None, :], other=0)
        if FP8_CODES:
            q = q.to(tl.float8e4nv, bitcast=True)
        acc += tl.sum(q.to(tl.float32) * x[None, :], axis=1)
    scale = tl.load(scale_ptr + cols, mask=col_mask, other=0.0)
    out = (acc * scale).to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + row * out_stride + cols, out, mask=col_mask)


def int8_weight_matmul(
    x: torch.Tensor,
    q: torch.Tensor,
    scale: torch.Tensor,
    out: torch.Tensor | None = None,
    block_m: int | None = None,
    block_n: int | None = None,
    block_k: int | None = None,
    num_warps: int = 4,
    num_stages: int = 4,
    gemv_max_rows: int = 0,
    max_block_m: int = 32,
    weight_rows: bool = False,
) -> torch.Tensor:
    """x [M, K] @ (q [N, K] int8 * scale [N] fp32)^T -> [M, N] in x.dtype.

    Up to ``gemv_max_rows`` rows take the GEMV kernel (block sizes: gemv_tile_sizes), more rows the
    tile kernel (block sizes: tile_sizes, with ``max_block_m``; the block_*, num_* and
    ``weight_rows`` arguments apply to it only; ``weight_rows`` loads the weight tile as stored,
    [BLOCK_N, BLOCK_K], and transposes it in registers).
    """
    if q.dtype != torch.int8:
        raise ValueError(f"q must be int8, got {q.dtype}")
    tile = _Tile(block_m, block_n, block_k, num_warps, num_stages, max_block_m, weight_rows)
    return _weight_only_matmul(x, q, scale, out, tile, gemv_max_rows, fp8_codes=False)


def fp8_weight_matmul(
    x: torch.Tensor,
    q: torch.Tensor,
    scale: torch.Tensor,
    out: torch.Tensor | None = None,
    block_m: int | None = None,
    block_n: int | None = None,
    block_k: int | None = None,
    num_warps: int = 4,
    num_stages: int = 4,
    gemv_max_rows: int = 0,
    max_block_m: int = 32,
    weight_rows: bool = False,
    fp8_activations: bool = False,
) -> torch.Tensor:
    """x [M, K] @ (e4m3(q [N, K] uint8 codes) * scale [N] fp32)^T -> [M, N] in x.dtype.

    Kernel choice and block sizes as for ``int8_weight_matmul``. ``fp8_activations`` (tile form only,
    rows above ``gemv_max_rows``): each row of x is also rounded to e4m3 under its own scale (its
    largest magnitude maps to 448, the per-token dynamic scaling of W8A8 fp8 serving), so the product
    runs on the fp8 MMA; the result is then x's rounding away from the weight-only one (reference:
    kernels.reference.fp8_activation_matmul_reference).
    ``q`` is a float8_e4m3fn tensor's bytes (``weight.view(torch.uint8)``); a float8_e4m3fn
    tensor itself is taken too and read through such a view.
    """
    if q.dtype == torch.float8_e4m3fn:
        q = q.view(torch.uint8)
    if q.dtype != torch.uint8:
        raise ValueError(f"q must be fp8 e4m3 codes as uint8 (or float8_e4m3fn), got {q.dtype}")
    tile = _Tile(block_m, block_n, block_k, num_warps, num_stages, max_block_m, weight_rows)
    return _weight_only_matmul(
        x, q, scale, out, tile, gemv_max_rows, fp8_codes=True, fp8_activations=fp8_activations
    )


@dataclass(frozen=True)
class _Tile:
    """The tile kernel's launch shape; None block sizes take tile_sizes / default_block_k."""

    block_m: int | None
    block_n: int | None
    block_k: int | None
    num_warps: int
    num_stages: int
    max_block_m: int
    weight_rows: bool = False


def _weight_only_matmul(
    x: torch.Tensor,
    q: torch.Tensor,
    scale: torch.Tensor,
    out: torch.Tensor | None,
    tile: _Tile,
    gemv_max_rows: int,
    fp8_codes: bool,
    fp8_activations: bool = False,
) -> torch.Tensor:
    if x.dim() != 2 or q.dim() != 2 or scale.dim() != 1:
        raise ValueError(
            f"want x [M, K], q [N, K], scale [N]; got {tuple(x.shape)}, {tuple(q.shape)}, "
            f"{tuple(scale.shape)}"
        )
    if x.shape[1] != q.shape[1] or scale.shape[0] != q.shape[0]:
        raise ValueError(
            f"shapes do not fit: x {tuple(x.shape)}, q {tuple(q.shape)}, scale {tuple(scale.shape)}"
        )
    # Checked, not converted: a conversion would be one more op per product in every decode step
    # (QuantizedLinear keeps its scales fp32 through Module.to).
    if scale.dtype != torch.float32 or scale.stride(0) != 1:
        raise ValueError(f"scale must be contiguous fp32, got {scale.dtype} with stride {scale.stride()}")
    check_last_dim_contiguous("x", x)
    check_last_dim_contiguous("q", q)
    m, k = x.shape
    n = q.shape[0]
    out = output_buffer(out, x, (m, n))
    if m == 0:
        return out
    if m <= gemv_max_rows:
        block_n, block_k = gemv_tile_sizes(n, k, on_cpu=interpreted(x))
        _weight_only_gemv_kernel[(triton.cdiv(n, block_n), m)](
            x, q, scale, out, n, k, x.stride(0), q.stride(0), out.stride(0),
            BLOCK_N=block_n, BLOCK_K=block_k, FP8_CODES=fp8_codes, num_warps=4,
        )  # fmt: skip
        return out
    default_m, default_n = tile_sizes(m, n, tile.max_block_m)
    block_m, block_n = tile.block_m or default_m, tile.block_n or default_n
    block_k = tile.block_k or default_block_k(n)
    grid = (triton.cdiv(m, block_m), triton.cdiv(n, block_n))
    _weight_only_matmul_kernel[grid](
        x,
        q,
        scale,
        out,
        m,
        n,
        k,
        x.stride(0),
        q.stride(0),
        out.stride(0),
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_K=block_k,
        EVEN_K=k % block_k == 0,
        DOT_FP32=x.dtype == torch.float32 or interpreted(x),
        FP8_CODES=fp8_codes,
        WEIGHT_ROWS=tile.weight_rows,
        FP8_ACTIVATIONS=fp8_activations,
        num_warps=tile.num_warps,
        num_stages=tile.num_stages,
    )
    return out


def gemv_tile_sizes(n: int, k: int, on_cpu: bool = False) -> tuple[int, int]:
    """(BLOCK_N, BLOCK_K) of the GEMV kernel: 4 channels a program up to N = 1,024 (144 programs a row
    for SmolLM2's 576-wide o_proj and down_proj), 8 above where K fits 1,024 (a program holds at most
    8,192 codes: 64 a thread at 4 warps, no spills); the whole K in one step up to 2,048 (so every
    weight byte a program needs is requested at once), 2,048-wide steps beyond. Not yet swept on a
    GPU: bench/kernels/gpu_quantized_decode_bench.py times it against the tile kernel with the
    weights in DRAM. In the CPU interpreter, whose cost is per program, up to 256 channels a program."""
    block_k = min(2048, triton.next_power_of_2(k))
    if on_cpu:
        return min(256, triton.next_power_of_2(n)), block_k
    return (8 if n > 1024 and block_k <= 1024 else 4), block_k


def tile_sizes(m: int, n: int, max_block_m: int = 32) -> tuple[int, int]:
    """(BLOCK_M, BLOCK_N) for a batch of ``m`` rows and ``n`` output channels.

    The fastest tiles of the H200 sweep (bench/results/gpu_int8_h200.json, ``best_tile``, SmolLM2's
    projections): at batch 1 one 16-row tile, 16 wide for N <= 960 (so N / 16 programs still pull
    the weight at full bandwidth), 32 for the 3,072-wide gate/up and 128 for the 49,152-row LM head.
    Above 16 rows, tiles of at most ``max_block_m`` rows (QuantizedKernelConfig.tile_max_block_m),
    16 wide for N <= 1,024 and, for gate/up, 32 wide under 64-row tiles, 64 wide with them; the LM
    head 128 x 128. Why 32 rows by default: that sweep tried only 64- and 128-row tiles at batch 128,
    and its best (64 x 16, 3.8-6.9 us) lost to cuBLAS (3.1-4.4), while a 32-row tile at batch 32 took
    2.9-4.6 us (gpu_quantized_decode_h200.md): at 128 rows, 32-row tiles run 4x the programs of that
    batch-32 launch, as many as 132 SMs take at once, against the 64-row tiles' 2x. A prediction
    until bench/kernels/gpu_quantized_decode_bench.py's tile sweep times it; 64 restores the old tiles.
    """
    if m <= 16:
        return 16, 16 if n <= 1024 else 32 if n <= 8192 else 128
    if n > 8192:
        return min(128, triton.next_power_of_2(m)), 128
    block_m = min(max_block_m, triton.next_power_of_2(m))
    return block_m, 16 if n <= 1024 else 64 if max_block_m >= 64 else 32


def default_block_k(n: int) -> int:
    """BLOCK_K: 128 won at every projection in the H200 sweep (K = 576 takes a masked last step), 64
    for the LM head."""
    return 64 if n > 8192 else 128
