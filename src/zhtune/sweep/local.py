"""The local launcher: grid points on this machine, one after another in this process, or
``workers`` at a time (one per device with ``--devices``) in their own processes."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from zhtune.config import SweepConfig
from zhtune.errors import UserError
from zhtune.sweep.launcher import Launcher, Outcome, Running, device_groups
from zhtune.sweep.point import WORKER_LOG, PointJob, run_point, save_job


class LocalLauncher(Launcher):
    def __init__(self, sweep: SweepConfig, workers: int | None = None,
                 devices: list[str] | None = None, processes_per_point: int = 1):
        # With train.num_processes N, a worker's device is a group of N GPUs ("cuda:0,1").
        self.processes_per_point = processes_per_point
        self.devices = device_groups(devices or sweep.devices or [], processes_per_point)
        self.workers = len(self.devices) if self.devices else (workers or sweep.workers)
        self.remote = self.workers > 1
        self.free = list(self.devices) if self.devices else [None] * self.workers
        self.procs: dict[int, tuple[subprocess.Popen, str | None]] = {}  # id(Running) -> process, device

    def submit(self, jobs: list[PointJob]) -> list[Running]:
        return [Running(job) for job in jobs]  # started in wait(), as workers free up

    def wait(self, running: list[Running]) -> list[tuple[Running, Outcome]]:
        if not self.remote:
            return [self._run_here(running[0])]
        for run in running:
            if id(run) not in self.procs and self.free:
                device = self.free.pop(0)
                self.procs[id(run)] = (self._start(run.job, device), device)
        deadline = time.time() + self.max_wait_s
        while True:
            ended = [(run, self._outcome(run)) for run in running
                     if id(run) in self.procs and self.procs[id(run)][0].poll() is not None]
            if ended or time.time() > deadline:
                break
            time.sleep(0.2)
        for run, _ in ended:
            self.free.append(self.procs.pop(id(run))[1])
        return ended

    def cancel(self) -> None:
        for proc, _ in self.procs.values():
            proc.terminate()
        for proc, _ in self.procs.values():
            proc.wait()
        self.procs.clear()

    @staticmethod
    def _run_here(run: Running) -> tuple[Running, Outcome]:
        try:
            run_point(run.job)
        except UserError:
            raise  # a settings problem: every point would fail the same way
        except Exception as err:  # one failed point must not lose the others
            return run, Outcome("error", f"{type(err).__name__}: {err}")
        return run, Outcome("done")

    @staticmethod
    def _start(job: PointJob, device: str | None) -> subprocess.Popen:
        env = dict(os.environ)
        if device and device.startswith("cuda:"):
            env["CUDA_VISIBLE_DEVICES"] = device.split(":", 1)[1]  # "0" or, for N processes, "0,1"
        job_file = save_job(job, job.out_dir / "sweep-job.json")
        with open(job.out_dir / WORKER_LOG, "a") as log_file:
            return subprocess.Popen([sys.executable, "-m", "zhtune.sweep.point", str(job_file)],
                                    env=env, stdout=log_file, stderr=subprocess.STDOUT)

    def _outcome(self, run: Running) -> Outcome:
        code = self.procs[id(run)][0].returncode
        log_file = Path(run.job.out_dir) / WORKER_LOG
        if code == 0:
            return Outcome("done")
        if code < 0:  # ended by a signal: killed, out of memory
            return Outcome("died", f"worker process killed by signal {-code}; see {log_file}")
        return Outcome("error", f"worker exited with status {code}; see {log_file}")
