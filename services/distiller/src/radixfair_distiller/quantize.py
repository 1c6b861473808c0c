"""Writes a weight-only quantized copy of a model directory (int8 or fp8, per output channel).

The embedding is int8 in both schemes (the format's version 2; why: its module docstring).

The format is radixfair_model_format.quantized_checkpoint, the one the worker
reads, so the worker loads the result with no other change.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file

from radixfair_distiller.model_dir import WEIGHTS_FILE, write_model_dir
from radixfair_model_format.quantized_checkpoint import CONFIG_KEY, config_section, quantized_state


def quantize_model_dir(source: Path, target: Path, scheme: str) -> Path:
    config = json.loads((source / "config.json").read_text())
    if CONFIG_KEY in config:
        raise ValueError(f"{source} is already quantized ({config[CONFIG_KEY]})")
    state = quantized_state(load_file(str(source / WEIGHTS_FILE)), scheme)
    config[CONFIG_KEY] = config_section(scheme)
    return write_model_dir(target, state, config, tokenizer_source=source)
