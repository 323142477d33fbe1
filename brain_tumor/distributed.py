"""Training on several processes, GPUs or machines with PyTorch's DistributedDataParallel under torchrun.

    torchrun --nproc_per_node 4 train.py --data DIR ... --out runs/ddp                      # one machine
    torchrun --nnodes 2 --node_rank 0 --nproc_per_node 4 --rdzv_backend c10d \\
        --rdzv_endpoint HOST:29500 train.py --data DIR ... --out runs/ddp                   # each machine

A plain ``python train.py`` is a world of one: ``setup`` returns ``World()`` and nothing here touches
torch.distributed. Under torchrun every rank computes the same grouped split and draws the same epoch (same
seed, same per-source weights) and the same augmentation of each global batch; each rank then trains on its
own contiguous share of that batch (``share``), so the ranks' shares are disjoint and together cover the
epoch, and DDP averages the gradients. ``--batch-size`` is per process: the global batch is
batch_size x world size, and the learning rate is used as given (scale it yourself, e.g. linearly with the
global batch). Only rank 0 logs, validates, and writes checkpoints, plots, the model folder and the Hub upload.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn as nn


def resolve_device(device: str = "auto", local_rank: int = 0) -> torch.device:
    """'auto' (the rank's GPU where CUDA is available, else the CPU), 'cpu' or 'cuda'."""
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but torch sees no CUDA device here")
    if device == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", local_rank % torch.cuda.device_count())


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (a world of one by default)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        """Rank 0: the only one that logs and writes."""
        return self.rank == 0

    def share(self, n: int) -> slice:
        """This rank's contiguous share of a global batch of n (shares are disjoint and cover it)."""
        return slice(self.rank * n // self.size, (self.rank + 1) * n // self.size)

    def wrap(self, model: nn.Module, sync_bn: bool = False) -> nn.Module:
        """The module to run forward passes through: DDP over ``model`` when there are several ranks."""
        if self.size == 1:
            return model
        if sync_bn:
            if self.device.type != "cuda":
                raise ValueError("--sync-bn needs CUDA: torch's SyncBatchNorm does not run on CPUs")
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def broadcast(self, value: float) -> float:
        """Rank 0's value, on every rank (decisions such as early stopping must agree)."""
        if self.size == 1:
            return value
        import torch.distributed as dist

        t = torch.tensor([float(value)], dtype=torch.float64,
                         device=self.device if self.device.type == "cuda" else "cpu")
        dist.broadcast(t, src=0)
        return float(t.item())

    def barrier(self) -> None:
        if self.size > 1:
            import torch.distributed as dist
            if self.device.type == "cuda":
                dist.barrier(device_ids=[self.device.index])
            else:
                dist.barrier()


def setup(device: str = "auto") -> World:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT in the
    environment): NCCL on GPUs, gloo on CPUs. Without torchrun, a world of one."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if size > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            if dev.type == "cuda":
                torch.cuda.set_device(dev)
            dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return World(rank, size, local_rank, dev)


def teardown(world: Optional[World]) -> None:
    if world is not None and world.size > 1:
        import torch.distributed as dist
        if dist.is_initialized():
            dist.destroy_process_group()
