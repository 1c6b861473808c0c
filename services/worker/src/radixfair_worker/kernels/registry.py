"""The registry of Triton kernels: each launcher's name, its module and its torch reference.

Everything that lists kernels reads this table: ``TritonBackend`` takes its plain operations
from it (the launchers) and ``TorchBackend`` its own (the references), the GPU kernel check
and the compile reports iterate over its modules, and ``tests/kernels/test_registry.py`` holds
each module to its test and benchmark files. A new kernel is three new files and two edits
(notes/kernels.md, "Adding a kernel"): ``kernels/<module>.py`` (the kernel and its launcher),
``tests/kernels/test_<module>.py``, ``bench/kernels/<module>.py``, its reference in
``kernels/reference.py`` and one entry here.

This module imports no triton: a launcher's module is imported only when ``launcher()`` is
called, so the torch backend and a CPU-only install can read the table.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from radixfair_worker.kernels import reference


@dataclass(frozen=True)
class Kernel:
    """One launcher.

    ``name`` is the launcher's function name in ``kernels/<module>.py``; where ``KernelBackend``
    has an operation of that name, the Triton backend runs this launcher for it and the torch
    backend runs ``reference``. ``bench/kernels/<module>.py`` times, checks and compiles every
    launcher of the module. ``step_fusion`` marks a cross-operation fusion, off unless
    ``StepFusionConfig`` turns it on (model/step_fusion.py).
    """

    name: str
    module: str
    reference: Callable[..., Any]
    step_fusion: bool = False

    def launcher(self) -> Callable[..., Any]:
        """The Triton launcher (imports its module, so needs triton)."""
        return getattr(importlib.import_module(f"{__package__}.{self.module}"), self.name)


def distinct_names(entries: tuple[Kernel, ...]) -> tuple[Kernel, ...]:
    """``entries`` unchanged; ValueError when two share a name.

    ``kernel()`` returns the first match, so without the check a second entry of one name would be
    silently unreachable while every per-kernel test still passed.
    """
    seen: dict[str, Kernel] = {}
    for entry in entries:
        first = seen.setdefault(entry.name, entry)
        if first is not entry:
            raise ValueError(
                f"two kernels are named {entry.name!r}: in modules {first.module!r} and {entry.module!r}"
            )
    return entries


KERNELS: tuple[Kernel, ...] = distinct_names(
    (
        Kernel("rms_norm", "rms_norm", reference.rms_norm_reference),
        Kernel("add_rms_norm", "rms_norm", reference.add_rms_norm_reference),
        Kernel("apply_rope", "rope", reference.apply_rope_reference),
        Kernel("rope_and_write_kv", "rope", reference.rope_and_write_kv_reference),
        Kernel("write_kv", "write_kv", reference.write_kv_reference),
        Kernel("silu_and_mul", "swiglu", reference.silu_and_mul_reference),
        Kernel("paged_decode_attention", "decode_attention", reference.paged_attention_reference),
        Kernel("cascade_decode_attention", "cascade_decode_attention", reference.cascade_decode_reference),
        Kernel("extend_attention", "extend_attention", reference.paged_attention_reference),
        Kernel("int8_weight_matmul", "int8_matmul", reference.int8_weight_matmul_reference),
        Kernel("fp8_weight_matmul", "int8_matmul", reference.fp8_weight_matmul_reference),
        Kernel("norm_matmul", "norm_matmul", reference.norm_matmul_reference, step_fusion=True),
        Kernel("norm_gate_up_silu", "norm_matmul", reference.norm_gate_up_silu_reference, step_fusion=True),
        Kernel(
            "norm_qkv_rope_write_kv", "norm_qkv_rope", reference.norm_qkv_rope_reference, step_fusion=True
        ),
    )
)


def kernel(name: str) -> Kernel:
    """The registry entry of launcher ``name``; KeyError names the known ones."""
    for entry in KERNELS:
        if entry.name == name:
            return entry
    raise KeyError(f"no kernel {name!r}; known: {', '.join(k.name for k in KERNELS)}")


def modules(step_fusion: bool | None = None) -> list[str]:
    """The kernel modules in table order, each once; ``step_fusion`` filters on the flag when given."""
    chosen = [k.module for k in KERNELS if step_fusion is None or k.step_fusion == step_fusion]
    return list(dict.fromkeys(chosen))
