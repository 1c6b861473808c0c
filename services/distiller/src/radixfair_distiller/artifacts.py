"""Finished artifacts: a model directory plus manifest.json, published atomically under one name.

The manifest holds the recipe, the parent model, the evaluation figures and
a content hash of the weights and config, so an artifact says what it is and
how it was made without its job.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from radixfair_distiller.model_dir import content_hash, count_parameters, staging_dir, weights_bytes

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Manifest:
    name: str
    job_id: str
    # The teacher's name, or the artifact this one was quantized from.
    parent: str
    parent_content_hash: str
    teacher: str
    teacher_content_hash: str
    quantization: str
    recipe_yaml: str
    content_hash: str
    parameters: int
    size_bytes: int
    created: float
    evaluation: dict[str, float] = field(default_factory=dict)
    teacher_evaluation: dict[str, float] = field(default_factory=dict)
    # Pruning and training details (kept layers, final shape, loss curve).
    details: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Artifact:
    path: Path
    manifest: Manifest


class ArtifactStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def path(self, name: str) -> Path:
        return self.root / name

    def exists(self, name: str) -> bool:
        return (self.path(name) / MANIFEST).exists()

    def get(self, name: str) -> Artifact | None:
        manifest_path = self.path(name) / MANIFEST
        if not manifest_path.exists():
            return None
        return Artifact(self.path(name), Manifest(**json.loads(manifest_path.read_text())))

    def publish(self, source: Path, manifest: Manifest) -> Artifact:
        """Copies the model directory ``source`` in under ``manifest.name`` with its manifest."""
        target = self.path(manifest.name)
        with staging_dir(target) as staging:
            shutil.copytree(source, staging, dirs_exist_ok=True)
            (staging / MANIFEST).write_text(json.dumps(asdict(manifest), indent=2, sort_keys=True))
        return Artifact(target, manifest)

    def all(self) -> list[Artifact]:
        artifacts = [self.get(p.name) for p in self.root.iterdir() if not p.name.startswith(".")]
        return sorted(
            (a for a in artifacts if a is not None), key=lambda a: (a.manifest.created, a.manifest.name)
        )


def describe(model_dir: Path) -> dict[str, int | str]:
    """content_hash, parameters and size_bytes of a model directory."""
    return {
        "content_hash": content_hash(model_dir),
        "parameters": count_parameters(model_dir),
        "size_bytes": weights_bytes(model_dir),
    }
