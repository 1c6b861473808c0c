"""Distiller configuration: a frozen dataclass built once at start-up and passed down."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from radixfair.tls import TlsConfig


@dataclass(frozen=True)
class DistillerConfig:
    """Everything a distiller process needs; see deploy/config/ for an example file."""

    host: str = "127.0.0.1"
    port: int = 50071
    # TLS of the gRPC port, as the router's and worker's ``tls``: cert_file and key_file; with
    # ca_file and require_client_cert, callers must present a certificate from that CA (mutual TLS).
    tls: TlsConfig = field(default_factory=TlsConfig)
    # Prometheus /metrics (jobs by state, stage, step, loss, tokens/s); 0 disables it.
    metrics_port: int = 0
    # Jobs (recipes, events, checkpoints), artifacts and the data cache live here.
    work_dir: Path = Path("~/.cache/radixfair/distiller")
    # Where the packaged teacher checkpoint is converted and cached (shared with the workers).
    model_cache_dir: Path = Path("~/.cache/radixfair/models")
    # "auto" trains on the GPU when one is present; or "cpu", "cuda", "cuda:1".
    device: str = "auto"
    # Intra-op CPU threads for torch; 0 keeps torch's default.
    torch_threads: int = 0
    # Under torchrun: a training step that waits longer than this on another rank fails the run
    # (a hung or dead rank), and how long the other ranks wait for rank 0 to prepare data, prune
    # and evaluate alone.
    distributed_step_timeout_s: float = 600.0
    distributed_wait_timeout_s: float = 6 * 3600.0

    def __post_init__(self) -> None:
        if self.torch_threads < 0:
            raise ValueError("torch_threads must be >= 0")
        if self.distributed_step_timeout_s <= 0 or self.distributed_wait_timeout_s <= 0:
            raise ValueError("distributed timeouts must be > 0")

    @property
    def jobs_dir(self) -> Path:
        return self.work_dir.expanduser() / "jobs"

    @property
    def artifacts_dir(self) -> Path:
        return self.work_dir.expanduser() / "artifacts"

    @property
    def cache_dir(self) -> Path:
        return self.work_dir.expanduser() / "cache"


def resolve_device(name: str):
    """The torch device for ``name`` ("auto": CUDA when available, else CPU)."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
