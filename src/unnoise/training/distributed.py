"""Processes and devices: one process, or one rank of a torchrun launch (PyTorch DDP)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from unnoise.device import resolve_device


@dataclass(frozen=True)
class Distributed:
    rank: int = 0  # this process's rank
    world: int = 1  # processes in the run
    device: torch.device = torch.device("cpu")  # where this rank computes

    @property
    def main(self) -> bool:
        """Rank 0: the one that writes logs, pictures and checkpoints."""
        return self.rank == 0

    def local(self, batch_size: int) -> slice:
        """This rank's rows of a global batch."""
        return slice(self.rank * batch_size // self.world, (self.rank + 1) * batch_size // self.world)

    def wrap(self, module: nn.Module) -> nn.Module:
        """The module as this run trains it: under DDP when there are several processes (gradients
        are all-reduced in backward), else itself."""
        if self.world == 1:
            return module
        return nn.parallel.DistributedDataParallel(module, device_ids=[self.device] if self.device.type == "cuda" else None)

    def barrier(self) -> None:
        """Wait until every rank is here (nothing on one process)."""
        if self.world > 1:
            dist.barrier()

    def agree(self, flag: bool) -> bool:
        """True on every rank when it is true on any (a decision all ranks must take together)."""
        if self.world == 1:
            return bool(flag)
        value = torch.tensor([float(flag)], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """The mean of a tensor over ranks (itself on one process)."""
        if self.world == 1:
            return tensor
        total = tensor.detach().clone()
        dist.all_reduce(total)
        return total / self.world


def setup_distributed(device: str | None = None) -> Distributed:
    """Join the process group when started by torchrun (WORLD_SIZE > 1): gloo on CPU, nccl on CUDA."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    use_cuda = resolve_device(device).type == "cuda"  # an unknown or absent device: one line, before any work
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    rank = dist.get_rank() if world > 1 else 0
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        dev = torch.device(device if device and ":" in device else f"cuda:{local}")
        torch.cuda.set_device(dev)
    else:
        dev = torch.device(device or "cpu")
    return Distributed(rank, world, dev)


def unwrap(model: nn.Module) -> nn.Module:
    """The network under DDP's and torch.compile's wrappers."""
    model = getattr(model, "module", model)  # DDP
    return getattr(model, "_orig_mod", model)  # torch.compile
