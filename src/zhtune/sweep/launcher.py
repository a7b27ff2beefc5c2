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


_LAUNCHERS = {"local": "zhtune.sweep.local:LocalLauncher",
              "ray": "zhtune.sweep.ray_launcher:RayLauncher",
              "slurm": "zhtune.sweep.slurm:SlurmLauncher"}
_EXTRAS = {"ray": "ray", "slurm": "submitit"}


def make_launcher(sweep: SweepConfig, **local_options) -> Launcher:
    """The configured launcher (``sweep.launcher``); Ray and submitit are optional extras."""
    module, _, cls = _LAUNCHERS[sweep.launcher].partition(":")
    try:
        launcher_cls = getattr(importlib.import_module(module), cls)
    except ModuleNotFoundError as err:
        if err.name != _EXTRAS.get(sweep.launcher):
            raise
        raise UserError(f"sweep.launcher={sweep.launcher} needs {err.name}: "
                        f"pip install 'zhtune[{sweep.launcher}]'") from None
    if sweep.launcher == "local":
        return launcher_cls(sweep, **local_options)
    return launcher_cls(sweep)
