"""torch.distributed for a distillation job launched by torchrun: one process per GPU (or CPU slot).

torchrun starts N copies of the CLI and tells each its place through RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT. The CLI reads them once
(``TorchrunEnv.from_env``), starts the process groups here and passes the
context down. Rank 0 runs the job (data, pruning, events, checkpoints,
evaluation, publishing); every rank trains. Each rank takes an equal,
contiguous slice of every global batch, and the global batch is still a
function of (seed, step), so N processes train the model one process would.

Two process groups: the default one (NCCL on CUDA, gloo on CPU) carries the
gradients and fails a step that waits longer than ``step_timeout``; a gloo
group carries the small control messages (which job to train, whether to
stop) on the CPU, with a longer timeout, because the other ranks wait on it
while rank 0 prepares data, prunes and evaluates alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from radixfair_distiller.data.batches import TokenBatch


@dataclass(frozen=True)
class TorchrunEnv:
    """A process's place in a torchrun job."""

    rank: int
    world_size: int
    local_rank: int

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> TorchrunEnv | None:
        """The torchrun placement, or None when this process was not started by torchrun with N > 1."""
        world_size = int(env.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return None
        return cls(int(env["RANK"]), world_size, int(env.get("LOCAL_RANK", env["RANK"])))


@dataclass(frozen=True)
class DistributedContext:
    """This rank's place, its device, and the gloo group for control messages."""

    rank: int
    world_size: int
    device: torch.device
    control: Any  # torch.distributed.ProcessGroup (gloo)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def broadcast(self, message: object = None) -> object:
        """Rank 0's ``message`` on every rank (the others pass nothing)."""
        box = [message if self.is_main else None]
        dist.broadcast_object_list(box, src=0, group=self.control)
        return box[0]

    def any(self, flag: bool) -> bool:
        """True on every rank when it is true on some rank (a stop every rank must see at the same step)."""
        value = torch.tensor([1 if flag else 0], dtype=torch.int32)
        dist.all_reduce(value, op=dist.ReduceOp.MAX, group=self.control)
        return bool(value.item())

    def gather(self, value: object) -> list[object]:
        """Every rank's ``value``, in rank order, on every rank."""
        values: list[object] = [None] * self.world_size
        dist.all_gather_object(values, value, group=self.control)
        return values

    def shard(self, batch: TokenBatch) -> TokenBatch:
        """This rank's contiguous rows of a global batch (its size is a multiple of the world size)."""
        rows = batch.input_ids.shape[0] // self.world_size
        part = slice(self.rank * rows, (self.rank + 1) * rows)
        return TokenBatch(batch.input_ids[part], batch.labels[part])

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        """The sum over ranks of a tensor on this rank's device (over the gradient group)."""
        total = value.clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total


def start_distributed(
    env: TorchrunEnv, device_name: str, step_timeout_s: float, wait_timeout_s: float
) -> DistributedContext:
    """Joins the torchrun job: NCCL on CUDA (one GPU per local rank), gloo on the CPU."""
    device = rank_device(device_name, env.local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(
        backend,
        rank=env.rank,
        world_size=env.world_size,
        timeout=timedelta(seconds=step_timeout_s),
        device_id=device if device.type == "cuda" else None,
    )
    control = dist.new_group(backend="gloo", timeout=timedelta(seconds=wait_timeout_s))
    return DistributedContext(env.rank, env.world_size, device, control)


def stop_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def rank_device(device_name: str, local_rank: int) -> torch.device:
    """This rank's device: its own GPU (cuda:LOCAL_RANK) when training on CUDA, else the CPU."""
    if device_name == "auto":
        device_name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device_name)
    if device.type == "cuda":
        return torch.device("cuda", local_rank)
    return device
