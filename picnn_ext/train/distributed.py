"""Running the trainer under ``torchrun``: the process group, the device of each rank, and the few
collectives the trainer needs.

A single process is a world of size 1 and needs no process group; every helper here then does nothing,
so the trainer has one code path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, List

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    device: torch.device
    # True when this module created the process group and so must destroy it at the end.
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes files and shows progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """``"auto"``: this rank's GPU where CUDA is available, else the CPU; ``"cuda"``: this rank's GPU."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    resolved = torch.device(device)
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} asked for, but this torch build or machine has no CUDA")
        if resolved.index is None:
            resolved = torch.device("cuda", local_rank)
    return resolved


def setup(device: str) -> DistContext:
    """Join the process group that ``torchrun`` describes in the environment, or use one that the caller
    has already initialised (a test spawning processes does that); else a single process.

    Each rank uses GPU ``LOCAL_RANK`` when the device is CUDA. The backend is NCCL on GPUs and gloo on
    the CPU.
    """
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_available() and dist.is_initialized():
        resolved = resolve_device(device, local_rank)
        return DistContext(dist.get_rank(), dist.get_world_size(), resolved)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    resolved = resolve_device(device, local_rank)
    if world_size <= 1:
        return DistContext(0, 1, resolved)
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    if resolved.type == "cuda":
        torch.cuda.set_device(resolved)
    dist.init_process_group(backend="nccl" if resolved.type == "cuda" else "gloo")
    return DistContext(dist.get_rank(), dist.get_world_size(), resolved, owns_group=True)


def teardown(context: DistContext) -> None:
    if context.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor, context: DistContext) -> torch.Tensor:
    """The sum of ``tensor`` over the ranks (in place, and returned)."""
    if context.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor

def gather_objects(value: Any, context: DistContext) -> List[Any]:
    """Every rank's ``value``, in rank order, on every rank."""
    if not context.distributed:
        return [value]
    gathered: List[Any] = [None] * context.world_size
    dist.all_gather_object(gathered, value)
    return gathered


def barrier(context: DistContext) -> None:
    if context.distributed:
        dist.barrier()
