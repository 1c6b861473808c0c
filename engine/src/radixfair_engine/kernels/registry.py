"""The registry of Triton kernels: each launcher's name, its module and its torch reference.

Everything that lists kernels reads this table: ``TritonBackend`` takes its plain operations
from it (the launchers) and ``TorchBackend`` its own (the references), the GPU kernel check
and the compile reports iterate over its modules, and ``tests/kernels/test_registry.py`` holds
each module to its test and benchmark files. The table is built from the declarations in
``kernels/reference.py``: each reference names the launcher(s) it judges (``@reference_of``),
so the pairing is written once, beside the op's semantics. A new kernel is three new files and
one edit (notes/kernels.md, "Adding a kernel"): ``kernels/<module>.py`` (the kernel and its
launcher), ``tests/kernels/test_<module>.py``, ``bench/kernels/<module>.py``, and its declared
reference in ``kernels/reference.py``.

This module imports no triton: a launcher's module is imported only when ``launcher()`` is
called, so the torch backend and a CPU-only install can read the table.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from radixfair_engine.kernels import reference


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


def declared_kernels(namespace: ModuleType) -> tuple[Kernel, ...]:
    """One ``Kernel`` per ``@reference_of`` declaration among ``namespace``'s functions, in
    definition order (a function's stacked declarations top-down)."""
    return tuple(
        Kernel(tag.name, tag.module, function, tag.step_fusion)
        for function in vars(namespace).values()
        if inspect.isfunction(function)
        for tag in getattr(function, reference.LAUNCHER_TAGS, ())
    )


KERNELS: tuple[Kernel, ...] = distinct_names(declared_kernels(reference))


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
