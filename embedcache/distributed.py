"""torchrun support: rank/world from the launcher's environment and a barrier that is a no-op otherwise."""

from __future__ import annotations

import os

import torch.distributed as dist


def launched_rank() -> tuple[int, int, int] | None:
    """(rank, world_size, local_rank) when started by torchrun with more than one process, else None."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    return int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", os.environ["RANK"]))


def init() -> None:
    """Join the launcher's process group (gloo: barriers only, so it works on CPU and GPU alike)."""
    if not dist.is_initialized():
        dist.init_process_group(backend="gloo")


def barrier() -> None:
    """Wait for every rank; nothing to wait for outside torchrun."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
