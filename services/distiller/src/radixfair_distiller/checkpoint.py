"""Training checkpoints: the student as a model directory plus optimizer state and progress.

Written into a sibling directory and renamed into place, so a distiller
killed while writing keeps the previous checkpoint intact.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import LlamaForCausalLM

from radixfair_distiller.model_dir import (
    WEIGHTS_FILE,
    copy_tokenizer,
    is_model_dir,
    llama_config_dict,
    llama_state,
    load_llama,
    staging_dir,
)

_OPTIMIZER_FILE = "optimizer.pt"
_PROGRESS_FILE = "progress.json"


@dataclass(frozen=True)
class Progress:
    # Optimizer steps completed; training resumes at this step.
    step: int
    # Per-step losses so far (the loss curve survives restarts).
    losses: list[float]


def save_checkpoint(
    target: Path,
    student: LlamaForCausalLM,
    optimizer: torch.optim.Optimizer,
    progress: Progress,
    tokenizer_source: Path,
) -> None:
    with staging_dir(target) as staging:
        # In the training dtype: a resumed run continues from exactly the weights it stopped at.
        save_file(llama_state(student, student.dtype), str(staging / WEIGHTS_FILE), metadata={"format": "pt"})
        (staging / "config.json").write_text(
            json.dumps(llama_config_dict(student.config), indent=2, sort_keys=True)
        )
        copy_tokenizer(tokenizer_source, staging)
        torch.save(optimizer.state_dict(), staging / _OPTIMIZER_FILE)
        (staging / _PROGRESS_FILE).write_text(json.dumps(asdict(progress)))


def has_checkpoint(path: Path) -> bool:
    return is_model_dir(path) and (path / _PROGRESS_FILE).exists() and (path / _OPTIMIZER_FILE).exists()


def load_checkpoint(
    path: Path, device: torch.device | str, dtype: torch.dtype
) -> tuple[LlamaForCausalLM, dict, Progress]:
    """(student in ``dtype``, optimizer state dict, progress) as saved."""
    student = load_llama(path, device, dtype)
    optimizer_state = torch.load(path / _OPTIMIZER_FILE, map_location=device, weights_only=True)
    progress = Progress(**json.loads((path / _PROGRESS_FILE).read_text()))
    return student, optimizer_state, progress
