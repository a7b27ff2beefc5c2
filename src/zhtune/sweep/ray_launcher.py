"""The Ray launcher: each grid point an ordinary resumable run, executed as a Ray task holding one
GPU per training process (or ``sweep.cpus_per_point`` CPUs on a CPU cluster). Ray schedules; the runner retries."""
from __future__ import annotations

import logging
from pathlib import Path

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from zhtune.config import SweepConfig
from zhtune.errors import UserError
from zhtune.sweep.launcher import Launcher, Outcome, Running, point_gpus
from zhtune.sweep.point import BaselineJob, Marker, PointJob, run_baseline, run_point

log = logging.getLogger(__name__)


class RayLauncher(Launcher):
    def __init__(self, sweep: SweepConfig):
        self.sweep = sweep
        self.refs: list[ray.ObjectRef] = []

    def open(self, out_root: Path, marker: Marker) -> None:
        # Worker output stays in each point's sweep-worker.log (and Ray's logs), not on this console.
        ray.init(address=self.sweep.address, log_to_driver=False)
        gpus = ray.cluster_resources().get("GPU", 0)
        n_gpus = point_gpus(self.sweep, self.processes_per_point, gpus > 0)
        self.resources = {"num_cpus": self.sweep.cpus_per_point, "num_gpus": n_gpus}
        log.info("Ray cluster of %d nodes; each grid point takes %d CPU and %d GPU",
                 len(_alive_nodes()), self.sweep.cpus_per_point, n_gpus)
        check_visible_on_every_node(marker)

    def run_baseline(self, job: BaselineJob) -> None:
        ref = ray.remote(run_baseline).options(**self.resources, max_retries=1,
                                               name="zhtune-sweep:baseline").remote(job)
        self.refs.append(ref)
        ray.get(ref)
        self.refs.remove(ref)

    def submit(self, jobs: list[PointJob]) -> list[Running]:
        # max_retries=0: the runner retries lost workers itself, so that it counts attempts and
        # reports them the same way for every launcher.
        task = ray.remote(run_point)
        running = [Running(job, task.options(**self.resources, max_retries=0,
                                             name=f"zhtune-sweep:{job.name}").remote(job))
                   for job in jobs]
        self.refs += [r.handle for r in running]
        return running

    def wait(self, running: list[Running]) -> list[tuple[Running, Outcome]]:
        refs = [r.handle for r in running]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=self.max_wait_s, fetch_local=False)
        ended = [(run, _outcome(run.handle)) for run in running if run.handle in ready]
        for run, _ in ended:
            self.refs.remove(run.handle)
        return ended

    def cancel(self) -> None:
        for ref in self.refs:
            ray.cancel(ref, force=True)
        self.refs.clear()

    def close(self) -> None:
        ray.shutdown()


def _outcome(ref: ray.ObjectRef) -> Outcome:
    try:
        ray.get(ref)
    except ray.exceptions.RayTaskError as err:  # the run raised: retrying would fail again
        return Outcome("error", str(err.cause if err.cause is not None else err).splitlines()[0])
    except ray.exceptions.RayError as err:  # worker process or node lost
        return Outcome("died", f"{type(err).__name__}: {str(err).splitlines()[0]}")
    return Outcome("done")


def _alive_nodes() -> list[dict]:
    return [n for n in ray.nodes() if n["Alive"]]


def _check_marker(marker: Marker) -> str:
    return marker.check()


def check_visible_on_every_node(marker: Marker) -> None:
    """A zero-resource task pinned to each node reads the driver's marker file, so that a sweep
    folder only this machine sees is refused before any work starts."""
    check = ray.remote(_check_marker)
    refs = [check.options(num_cpus=0, max_retries=0, scheduling_strategy=NodeAffinitySchedulingStrategy(
        n["NodeID"], soft=False)).remote(marker) for n in _alive_nodes()]
    try:
        ray.get(refs, timeout=120)
    except ray.exceptions.RayTaskError as err:
        raise UserError(f"sweep: {err.cause}") from None
    except ray.exceptions.GetTimeoutError:
        raise UserError("sweep: the check that every Ray node sees the sweep folder did not finish "
                        "within 2 minutes; are the nodes up?") from None
