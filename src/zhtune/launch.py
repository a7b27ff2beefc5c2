"""``--nproc N`` (``train.num_processes``): zhtune starts its own distributed launch.

A command asked for several processes, and not already one of them, runs itself again under
``torchrun`` (``python -m torch.distributed.run --standalone``: one machine, a free rendezvous
port) with the same config, and waits. Each process then takes the GPU of its local rank
(``zhtune.devices.pick_device``); on a machine without GPUs the processes train on the CPU over
gloo (how the tests run it).
"""
from __future__ import annotations

import logging
import subprocess
import sys

import torch

from zhtune.devices import launched_processes
from zhtune.errors import UserError

log = logging.getLogger(__name__)


def should_launch(nproc: int) -> bool:
    """True if this process must start ``nproc`` processes (it is not one of a launch yet)."""
    return nproc > 1 and launched_processes() == 1


def torchrun_command(nproc: int, args: list[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={nproc}", "-m", "zhtune", *args]


def launch(nproc: int, args: list[str]) -> None:
    """Run ``zhtune ARGS`` in ``nproc`` processes and wait for them; UserError if they fail."""
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus and nproc > gpus:
        raise UserError(f"train.num_processes={nproc} but {gpus} GPU(s) are visible: one process "
                        f"per GPU, so at most --nproc {gpus}")
    command = torchrun_command(nproc, args)
    log.info("starting %d processes: %s", nproc, " ".join(command))
    code = subprocess.run(command).returncode
    if code != 0:
        raise UserError(f"`zhtune {args[0]}` in {nproc} processes failed (exit status {code}); "
                        f"the processes' output is above")
