"""Reads a GGUF file: its metadata and its tensors, dequantized to float32.

GGUF (llama.cpp's format, version 2 and 3) is a header, key/value metadata, a table of tensor
descriptions, then the tensors' data, each at an aligned offset. The gguf package's reader builds
a numpy view per metadata field, which for a tokenizer of ~100k strings takes tens of seconds on
a slow core; this one reads the metadata with struct in one pass (well under a second).

Only the tensor types the packaged SmolLM2 uses and their plain neighbours are dequantized (F32,
F16, BF16, Q8_0, Q4_0, Q4_1); any other type raises UnsupportedGGUFError, so a caller can fall
back to a general converter.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

_MAGIC = b"GGUF"
_DEFAULT_ALIGNMENT = 32

# Metadata value types (gguf_type) -> struct format of a scalar.
_SCALARS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_STRING, _ARRAY = 8, 9

# ggml tensor types: (values per block, bytes per block).
F32, F16, Q4_0, Q4_1, Q8_0, BF16 = 0, 1, 2, 3, 8, 30
_BLOCKS = {F32: (1, 4), F16: (1, 2), BF16: (1, 2), Q4_0: (32, 18), Q4_1: (32, 20), Q8_0: (32, 34)}


class UnsupportedGGUFError(ValueError):
    """The file is not a GGUF this reader handles (bad magic, old version, unknown tensor type)."""


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's description. ``shape`` is torch's order (outermost first; GGUF stores the
    innermost dimension first); ``offset`` is from the start of the file."""

    name: str
    shape: tuple[int, ...]
    ggml_type: int
    offset: int

    @property
    def n_values(self) -> int:
        n = 1
        for size in self.shape:
            n *= size
        return n

    @property
    def n_bytes(self) -> int:
        per_block, block_bytes = _BLOCKS[self.ggml_type]
        return self.n_values // per_block * block_bytes


class GGUFFile:
    """A GGUF file's ``metadata`` {key: value} and ``tensors`` {name: TensorInfo}; ``read(name)``
    is the tensor as float32 of its shape. The whole file is read once (the packaged model's is
    ~100 MB): its tensors are all read anyway."""

    def __init__(self, path: Path) -> None:
        self._data = bytearray(path.read_bytes())
        self.metadata, self.tensors = _read_header(self._data)

    def read(self, name: str) -> torch.Tensor:
        info = self.tensors[name]
        if info.offset + info.n_bytes > len(self._data):
            raise UnsupportedGGUFError(f"tensor {name} runs past the end of the file")
        raw = torch.frombuffer(self._data, dtype=torch.uint8, count=info.n_bytes, offset=info.offset)
        return dequantize(raw, info.ggml_type).reshape(info.shape)


def dequantize(raw: torch.Tensor, ggml_type: int) -> torch.Tensor:
    """Flat float32 values of ``raw`` (uint8, whole blocks of ``ggml_type``; little-endian host).

    Each block's scale (and minimum) is widened to float32 first and the value computed as
    ``d * q (+ m)`` in float32, in ggml's own order of operations."""
    if ggml_type == F32:
        return raw.view(torch.float32).clone()
    if ggml_type == F16:
        return raw.view(torch.float16).float()
    if ggml_type == BF16:
        return raw.view(torch.bfloat16).float()
    if ggml_type not in _BLOCKS:
        raise UnsupportedGGUFError(f"ggml tensor type {ggml_type} is not supported by this reader")
    blocks = raw.reshape(-1, _BLOCKS[ggml_type][1])
    d = blocks[:, 0:2].contiguous().view(torch.float16).float()
    if ggml_type == Q8_0:
        return (d * blocks[:, 2:].contiguous().view(torch.int8).float()).reshape(-1)
    nibbles = blocks[:, 4:] if ggml_type == Q4_1 else blocks[:, 2:]
    # A block's 16 bytes hold values 0-15 in their low nibbles and 16-31 in their high ones.
    # In place on one float32 buffer: the model's tensors are most of a GB in float32.
    values = torch.empty((blocks.shape[0], 32), dtype=torch.float32)
    values[:, :16] = nibbles & 0x0F
    values[:, 16:] = nibbles >> 4
    if ggml_type == Q4_0:
        return values.sub_(8.0).mul_(d).reshape(-1)
    m = blocks[:, 2:4].contiguous().view(torch.float16).float()
    return values.mul_(d).add_(m).reshape(-1)


def _read_header(data: bytearray) -> tuple[dict[str, Any], dict[str, TensorInfo]]:
    reader = _Reader(data)
    if reader.take(4) != _MAGIC:
        raise UnsupportedGGUFError("not a GGUF file (bad magic)")
    version = reader.scalar("<I")
    if version < 2:
        raise UnsupportedGGUFError(f"GGUF version {version} is not supported (2 or later)")
    n_tensors, n_kv = reader.scalar("<Q"), reader.scalar("<Q")
    metadata: dict[str, Any] = {}
    for _ in range(n_kv):
        key = reader.string()
        metadata[key] = reader.value(reader.scalar("<I"))
    described = []
    for _ in range(n_tensors):
        name = reader.string()
        dims = [reader.scalar("<Q") for _ in range(reader.scalar("<I"))]
        ggml_type, offset = reader.scalar("<I"), reader.scalar("<Q")
        if ggml_type not in _BLOCKS:
            raise UnsupportedGGUFError(f"tensor {name} has ggml type {ggml_type}, not supported here")
        described.append((name, tuple(reversed(dims)), ggml_type, offset))
    alignment = int(metadata.get("general.alignment", _DEFAULT_ALIGNMENT))
    data_start = -(-reader.position // alignment) * alignment
    tensors = {
        name: TensorInfo(name, shape, ggml_type, data_start + offset)
        for name, shape, ggml_type, offset in described
    }
    return metadata, tensors


class _Reader:
    """Sequential little-endian reads from the header's bytes."""

    def __init__(self, data: bytearray) -> None:
        self._data = data
        self.position = 0

    def take(self, n: int) -> bytes:
        chunk = bytes(self._data[self.position : self.position + n])
        if len(chunk) != n:
            raise UnsupportedGGUFError("GGUF header is truncated")
        self.position += n
        return chunk

    def scalar(self, fmt: str) -> Any:
        (value,) = struct.unpack_from(fmt, self._data, self.position)
        self.position += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        return self.take(self.scalar("<Q")).decode("utf-8")

    def value(self, value_type: int) -> Any:
        if value_type == _STRING:
            return self.string()
        if value_type == _ARRAY:
            item_type, count = self.scalar("<I"), self.scalar("<Q")
            if item_type in _SCALARS:
                fmt = _SCALARS[item_type]
                values = struct.unpack_from(f"<{count}{fmt[1]}", self._data, self.position)
                self.position += count * struct.calcsize(fmt)
                return list(values)
            return [self.value(item_type) for _ in range(count)]
        if value_type in _SCALARS:
            return self.scalar(_SCALARS[value_type])
        raise UnsupportedGGUFError(f"unknown GGUF metadata type {value_type}")
