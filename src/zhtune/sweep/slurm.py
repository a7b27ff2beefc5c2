"""The Slurm launcher, through submitit: one job array over the grid points, queued behind the
baseline job (``afterok``), submitted from the login node by ``zhtune sweep`` itself (no sbatch
script). ``sweep.slurm.cluster: local`` runs the same job array as processes on this machine."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import submitit
from submitit.core.utils import FailedJobError, UncompletedJobError

from zhtune.config import SweepConfig
from zhtune.errors import UserError
from zhtune.sweep.launcher import Launcher, Outcome, Running, point_gpus
from zhtune.sweep.point import BaselineJob, Marker, PointJob, run_baseline, run_point


class SlurmPoint(submitit.helpers.Checkpointable):
    """One grid point as a submitit job. Checkpointable: when Slurm preempts it or its time runs
    out, submitit requeues the same call, and the run continues from its last checkpoint."""

    def __call__(self, job: PointJob) -> dict:
        return run_point(job)


class SlurmLauncher(Launcher):
    def __init__(self, sweep: SweepConfig):
        self.sweep = sweep
        self.jobs: list[submitit.Job] = []
        self.baseline: submitit.Job | None = None

    def open(self, out_root: Path, marker: Marker) -> None:
        s = self.sweep.slurm
        if s.cluster == "slurm" and shutil.which("sbatch") is None:
            raise UserError("sweep.launcher=slurm: no sbatch here; run zhtune sweep on a Slurm login "
                            "node, or set sweep.slurm.cluster=local to try the job array on this machine")
        # Logs and pickled calls of every job; on the shared sweep folder, as the nodes must read them.
        self.executor = submitit.AutoExecutor(folder=out_root / "slurm" / "%j", cluster=s.cluster)
        self.params = dict(
            name=f"zhtune-{out_root.name}", timeout_min=s.time_min, cpus_per_task=self.sweep.cpus_per_point,
            # A real cluster is assumed to have GPUs; the local stand-in has none.
            gpus_per_node=point_gpus(self.sweep, self.processes_per_point, s.cluster == "slurm"),
            slurm_partition=s.partition, slurm_array_parallelism=s.array_parallelism,
            slurm_additional_parameters=dict(s.additional))
        if s.mem_gb:
            self.params["mem_gb"] = s.mem_gb
        self.executor.update_parameters(**{k: v for k, v in self.params.items() if v is not None})

    def run_baseline(self, job: BaselineJob) -> None:
        self.baseline = self.executor.submit(run_baseline, job)
        self.jobs.append(self.baseline)
        if self.executor.cluster != "slurm":
            self.baseline.wait()  # no job dependencies outside Slurm: wait here instead
            self._check_baseline()

    def submit(self, jobs: list[PointJob]) -> list[Running]:
        extra = dict(self.sweep.slurm.additional)
        if self.baseline is not None and self.executor.cluster == "slurm" and not self.baseline.done():
            extra["dependency"] = f"afterok:{self.baseline.job_id}"
        self.executor.update_parameters(slurm_additional_parameters=extra)
        with self.executor.batch():  # one job array
            handles = [self.executor.submit(SlurmPoint(), job) for job in jobs]
        self.jobs += handles
        return [Running(job, handle) for job, handle in zip(jobs, handles)]

    def wait(self, running: list[Running]) -> list[tuple[Running, Outcome]]:
        deadline = time.time() + self.max_wait_s
        while True:
            self._check_baseline()
            ended = [(run, _outcome(run.handle)) for run in running if run.handle.done()]
            if ended or time.time() > deadline:
                return ended
            time.sleep(0.5)

    def cancel(self) -> None:
        for job in self.jobs:
            if not job.done():
                job.cancel(check=False)  # scancel (SIGINT to the process with the local executor)
        self.jobs.clear()

    def _check_baseline(self) -> None:
        """Points wait on the baseline job (afterok); if it failed they would wait forever."""
        if self.baseline is None or not self.baseline.done():
            return
        try:
            self.baseline.result()
        except (FailedJobError, UncompletedJobError) as err:
            self.cancel()
            raise UserError(f"sweep: the baseline job {self.baseline.job_id} failed ({_last_line(str(err))}); "
                            f"see {self.baseline.paths.stderr}") from None
        self.baseline = None  # done: later submissions (retries) need no dependency


def _outcome(job: submitit.Job) -> Outcome:
    try:
        job.result()
    except UncompletedJobError as err:  # killed, node lost, out of time without requeue
        return Outcome("died", f"job {job.job_id} ended without a result ({job.state}); see {job.paths.stderr}: "
                               f"{str(err).splitlines()[0]}")
    except FailedJobError as err:  # the run raised
        return Outcome("error", f"job {job.job_id} failed; see {job.paths.stderr}: "
                                f"{_last_line(str(err))}")
    return Outcome("done")


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else text
