"""The launcher interface: where grid points run. Everything else about a sweep (the grid, the
baseline, retries, progress, results) is shared and lives in ``zhtune.sweep.runner``.

A launcher starts jobs and reports how each ended; it makes no decisions. ``died`` (the worker or
job was lost: killed process, lost node, preempted without requeue) is retried by the runner from
the point's last checkpoint; ``error`` (the run itself raised) is not, since it would fail again.
"""
from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from zhtune.config import SweepConfig
from zhtune.errors import UserError
from zhtune.sweep.point import BaselineJob, Marker, PointJob, run_baseline


@dataclass
class Running:
    job: PointJob
    handle: Any = None  # the launcher's own: a Ray ObjectRef, a submitit Job, a Popen


@dataclass
class Outcome:
    status: Literal["done", "died", "error"]
    message: str = ""


class Launcher(ABC):
    remote = True  # workers are other processes, maybe on other machines
    max_wait_s = 2.0  # how long wait() may block: the progress lines refresh in between
    processes_per_point = 1  # train.num_processes of the points: one GPU each where there are GPUs

    def open(self, out_root: Path, marker: Marker) -> None:
        """Connect to the cluster and refuse a sweep folder that some worker cannot see."""

    def run_baseline(self, job: BaselineJob) -> None:
        """Evaluate the shared baseline before any grid point starts (default: here)."""
        run_baseline(job)

    @abstractmethod
    def submit(self, jobs: list[PointJob]) -> list[Running]:
        """Start (or queue) these points."""

    @abstractmethod
    def wait(self, running: list[Running]) -> list[tuple[Running, Outcome]]:
        """The jobs among ``running`` that ended, waiting at most ``max_wait_s`` for one."""

    @abstractmethod
    def cancel(self) -> None:
        """Stop every job this launcher started that is still queued or running (Ctrl-C)."""

    def close(self) -> None:
        """Disconnect."""


def point_gpus(sweep: SweepConfig, processes: int, cluster_has_gpus: bool) -> int:
    """GPUs one grid point reserves: ``sweep.gpus_per_point`` when set, else one per training process
    (``train.num_processes``) where the cluster has GPUs. A point started with N processes on fewer
    GPUs would put two ranks on one GPU (NCCL refuses), so that setting is refused here."""
    if sweep.gpus_per_point is None:
        return processes if cluster_has_gpus else 0
    if 0 < sweep.gpus_per_point < processes:
        raise UserError(f"sweep.gpus_per_point={sweep.gpus_per_point} but train.num_processes={processes}: each "
                        f"point starts {processes} training processes, one per GPU; set sweep.gpus_per_point="
                        f"{processes} (or leave it unset), or 0 for CPU processes")
    return sweep.gpus_per_point


def device_groups(devices: list[str], processes: int) -> list[str]:
    """``--devices cuda:0,cuda:1,cuda:2,cuda:3`` with 2 processes per point: ``["cuda:0,1", "cuda:2,3"]``,
    one group per worker (the local launcher's unit of a device)."""
    if processes <= 1:
        return list(devices)
    if len(devices) % processes or any(not d.startswith("cuda:") for d in devices):
        raise UserError(f"--devices {','.join(devices)}: with train.num_processes={processes} each point needs "
                        f"{processes} GPUs, so give a multiple of {processes} cuda:N devices")
    return ["cuda:" + ",".join(d.split(":", 1)[1] for d in devices[i:i + processes])
            for i in range(0, len(devices), processes)]


_LAUNCHERS = {"local": "zhtune.sweep.local:LocalLauncher",
              "ray": "zhtune.sweep.ray_launcher:RayLauncher",
              "slurm": "zhtune.sweep.slurm:SlurmLauncher"}
_EXTRAS = {"ray": "ray", "slurm": "submitit"}


def make_launcher(sweep: SweepConfig, processes_per_point: int = 1, **local_options) -> Launcher:
    """The configured launcher (``sweep.launcher``); Ray and submitit are optional extras.
    ``processes_per_point``: the largest train.num_processes of the grid's points."""
    module, _, cls = _LAUNCHERS[sweep.launcher].partition(":")
    try:
        launcher_cls = getattr(importlib.import_module(module), cls)
    except ModuleNotFoundError as err:
        if err.name != _EXTRAS.get(sweep.launcher):
            raise
        raise UserError(f"sweep.launcher={sweep.launcher} needs {err.name}: "
                        f"pip install 'zhtune[{sweep.launcher}]'") from None
    if sweep.launcher == "local":
        return launcher_cls(sweep, processes_per_point=processes_per_point, **local_options)
    launcher = launcher_cls(sweep)
    launcher.processes_per_point = processes_per_point
    return launcher
