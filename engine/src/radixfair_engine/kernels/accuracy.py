"""How a kernel's output is judged against its reference, shared by the CPU tests and the GPU check.

The measure is ||out - ref|| / ||ref|| against a reference computed in fp64 from the
same inputs. fp32 arithmetic lands far below 1e-3 (we ask for 1e-5); bf16 operands
land between 1e-3 and 1e-2. NaN never passes, and outputs are filled with NaN
before a kernel runs, so an element the kernel forgot to write fails the check.
"""

from __future__ import annotations

import torch

TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 5e-3}


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in fp64; inf if out holds any NaN or inf."""
    out64, ref64 = out.detach().double().cpu(), ref.detach().double().cpu()
    if not torch.isfinite(out64).all():
        return float("inf")
    return ((out64 - ref64).norm() / ref64.norm().clamp_min(1e-300)).item()


def poisoned_like(tensor: torch.Tensor) -> torch.Tensor:
    """A tensor shaped like ``tensor`` and filled with NaN."""
    return torch.full_like(tensor, float("nan"))
