"""A GGUF file's metadata and tensors, read with the gguf package (llama.cpp's own Python reader).

The package parses the header once (a few seconds for a tokenizer of ~50k strings) and
dequantizes every ggml type it knows; this module only turns its fields into plain Python values
and its tensors into float32 torch tensors in torch's dimension order. Transformers' GGUF loader,
which the conversion used before, parsed the same metadata three times and rebuilt its name table
per tensor: minutes on a slow core, where this takes seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gguf import GGUFReader
from gguf.quants import dequantize


class UnsupportedGGUFError(ValueError):
    """The file is not a GGUF the gguf package reads, or holds a tensor type it cannot dequantize."""


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's description; ``shape`` is torch's order (outermost first; GGUF stores the
    innermost dimension first)."""

    name: str
    shape: tuple[int, ...]
    ggml_type: int


class GGUFFile:
    """A GGUF file's ``metadata`` {key: value} and ``tensors`` {name: TensorInfo}; ``read(name)`` is
    the tensor as float32 of its shape."""

    def __init__(self, path: Path) -> None:
        try:
            self._reader = GGUFReader(path)
        # ValueError: a bad magic or version, or tensor data cut short; IndexError: a header cut short.
        except (ValueError, IndexError, OSError) as error:
            raise UnsupportedGGUFError(f"{path} is not a readable GGUF file: {error}") from error
        self.metadata: dict[str, Any] = {
            key: field.contents() for key, field in self._reader.fields.items() if not key.startswith("GGUF.")
        }
        self._tensors = {t.name: t for t in self._reader.tensors}
        self.tensors = {
            t.name: TensorInfo(t.name, tuple(int(d) for d in reversed(t.shape)), int(t.tensor_type))
            for t in self._reader.tensors
        }

    def read(self, name: str) -> torch.Tensor:
        tensor = self._tensors[name]
        try:
            values = dequantize(tensor.data, tensor.tensor_type)
        except NotImplementedError as error:
            raise UnsupportedGGUFError(f"tensor {name}: {error}") from error
        # Plain float types come back as views of the read-only file mapping: copied then, not otherwise.
        flat = np.require(values, dtype=np.float32, requirements=("C", "W")).reshape(-1)
        return torch.from_numpy(flat).reshape(self.tensors[name].shape)
