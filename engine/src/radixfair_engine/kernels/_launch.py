"""Small launch-time facts shared by the kernel launchers."""

from __future__ import annotations

import torch


def interpreted(tensor: torch.Tensor) -> bool:
    """True when the kernel will run in Triton's CPU interpreter, not on a GPU.

    Triton 3.6's interpreter multiplies bf16 ``tl.dot`` operands as raw 16-bit
    integers (garbage results), so the attention kernels upcast their dot
    operands to fp32 there; on the GPU the bf16 tensor-core path runs.
    """
    return tensor.device.type == "cpu"


def check_last_dim_contiguous(name: str, tensor: torch.Tensor) -> None:
    if tensor.stride(-1) != 1:
        raise ValueError(f"{name} must be contiguous in its last dimension, got strides {tensor.stride()}")


def output_buffer(given: torch.Tensor | None, like: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """``given`` after checking it is a ``shape`` tensor of like's dtype, or a new one.

    Callers pass their own buffers to keep addresses fixed under CUDA graphs, and
    tests pass NaN-filled ones to prove every element gets written.
    """
    if given is None:
        return torch.empty(shape, dtype=like.dtype, device=like.device)
    if tuple(given.shape) != tuple(shape) or given.dtype != like.dtype or given.device != like.device:
        raise ValueError(
            f"output must be {tuple(shape)} {like.dtype}, got {tuple(given.shape)} {given.dtype}"
        )
    check_last_dim_contiguous("output", given)
    return given
