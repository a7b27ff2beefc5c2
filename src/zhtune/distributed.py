"""This process's place in a distributed launch (torchrun, ``--nproc``), and the few collectives
zhtune needs outside the Trainer: a barrier, a broadcast from rank 0, an all-gather.

Outside a launch every function is the single-process identity (rank 0 of 1, no communication),
so library code calls them unconditionally. The process group is the one accelerate sets up (NCCL
on GPUs, gloo on the CPU), shared with the HF Trainer.
"""
from __future__ import annotations

from typing import Any

import torch.distributed as dist

from zhtune.devices import launched_processes


def init_process_group(cpu: bool) -> None:
    """Join the launch's process group if this process is part of one (idempotent)."""
    if launched_processes() > 1 and not dist.is_initialized():
        from accelerate import PartialState

        PartialState(cpu=cpu)  # initialises torch.distributed from torchrun's environment


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    if _active():
        return dist.get_rank()
    import os

    return int(os.environ.get("RANK", "0") or 0)


def world_size() -> int:
    return dist.get_world_size() if _active() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if _active():
        dist.barrier()


def broadcast_from_main(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (picklable values)."""
    if not _active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather(value: Any) -> list[Any]:
    """Every rank's ``value``, in rank order, on every rank."""
    if not _active():
        return [value]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out
