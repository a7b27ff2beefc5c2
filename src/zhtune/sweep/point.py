"""What a worker runs, whichever launcher started it: one grid point as an ordinary `zhtune run`, or
the shared baseline.

Jobs are plain picklable records so that Ray, submitit and a local subprocess hand the same thing
to the same function. A worker writes ``sweep-status.json`` (running on NODE / done / failed) and
``sweep-worker.log`` into the point's folder; the driver reads the status for its progress lines.
Every job first checks the driver's marker file, so a worker that does not see the sweep folder
(no shared filesystem) fails at once with a message saying so instead of writing elsewhere.

``python -m zhtune.sweep.point JOB.json`` runs one point (the local launcher's worker processes).
"""
from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import time
import uuid
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import yaml

from zhtune.config import ExperimentConfig, config_to_dict, load_config
from zhtune.errors import UserError
from zhtune.io import atomic_write_json, atomic_write_text, read_json

log = logging.getLogger(__name__)

MARKER = ".zhtune-sweep-marker"
STATUS = "sweep-status.json"
WORKER_LOG = "sweep-worker.log"


class SharedFolderError(UserError):
    """A worker cannot see the sweep folder the driver wrote."""


@dataclass(frozen=True)
class Marker:
    """A file with a fresh token, written by the driver into the sweep folder at every start."""
    path: str
    token: str

    @classmethod
    def create(cls, out_root: Path) -> "Marker":
        marker = cls(str(out_root / MARKER), uuid.uuid4().hex)
        atomic_write_text(marker.path, marker.token)
        return marker

    def check(self) -> str:
        """This machine's name if it sees the driver's marker; else a SharedFolderError."""
        host = socket.gethostname()
        try:
            seen = Path(self.path).read_text(encoding="utf-8")
        except OSError:
            seen = None
        if seen != self.token:
            raise SharedFolderError(
                f"the sweep folder {Path(self.path).parent} is not visible from {host} (pid "
                f"{os.getpid()}): {'a different file is' if seen else 'nothing is'} at {self.path}. "
                "Every node must see the sweep folder at the same path (a shared filesystem such "
                "as NFS or Lustre); set output.dir to such a folder")
        return host


@dataclass(frozen=True)
class PointJob:
    name: str
    config_path: str  # OUT/runs/<name>/sweep-point.yaml, written by the driver
    data_dir: str | None
    marker: Marker  # also tells this sweep's status files from an earlier one's
    attempt: int = 1
    capture_log: bool = True  # False when run inside the driver, which logs to the console

    @property
    def out_dir(self) -> Path:
        return Path(self.config_path).parent

    def retry(self) -> "PointJob":
        return replace(self, attempt=self.attempt + 1)

    def status(self) -> dict | None:
        """What this attempt's worker last wrote about the point (None before it started)."""
        try:
            status = read_json(self.out_dir / STATUS)
        except (OSError, ValueError):
            return None
        same = status.get("sweep") == self.marker.token and status.get("attempt") == self.attempt
        return status if same else None


@dataclass(frozen=True)
class BaselineJob:
    config_path: str  # the sweep's config, OUT/sweep-config.yaml
    data_dir: str | None
    marker: Marker


def write_config(cfg: ExperimentConfig, path: Path) -> str:
    """``cfg`` as YAML at ``path``: what a worker loads, and a record of what ran."""
    atomic_write_text(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False, allow_unicode=True))
    return str(path)


def run_point(job: PointJob) -> dict:
    """Run one grid point (resuming whatever an earlier attempt left) and return a short summary."""
    from zhtune.experiment import run_experiment

    host = job.marker.check()
    t0 = time.time()
    with _log_to(job.out_dir / WORKER_LOG, job.capture_log):
        log.info("sweep point %s: attempt %d on %s (pid %d)", job.name, job.attempt, host, os.getpid())
        _log_resume(job)
        _write_status(job, "running", host)
        try:
            result = run_experiment(load_config(job.config_path), data_dir=job.data_dir)
        except BaseException as err:
            _write_status(job, "failed", host, error=f"{type(err).__name__}: {err}")
            raise
        _write_status(job, "done", host, seconds=round(time.time() - t0, 1))
        log.info("sweep point %s: done on %s (ran %s)", job.name, host, ", ".join(result.ran) or "-")
    return {"name": job.name, "node": host, "ran": result.ran, "seconds": time.time() - t0}


def run_baseline(job: BaselineJob) -> str:
    """Evaluate the base model once for the whole sweep (into the shared baseline cache)."""
    from zhtune.experiment import baseline_dir, evaluate_baseline

    job.marker.check()
    cfg = load_config(job.config_path)
    data_dir = Path(job.data_dir) if job.data_dir else None
    out = baseline_dir(cfg, data_dir)
    evaluate_baseline(cfg, data_dir)
    return str(out)


def _write_status(job: PointJob, state: str, node: str, **extra) -> None:
    atomic_write_json(job.out_dir / STATUS, {"state": state, "node": node, "pid": os.getpid(),
                                             "attempt": job.attempt, "sweep": job.marker.token,
                                             "time": time.time(), **extra})


def _log_resume(job: PointJob) -> None:
    """Say so when this attempt continues an interrupted training run."""
    from zhtune.train.checkpoints import latest_checkpoint

    train = job.out_dir / "train"
    last = None if (train / "adapter").exists() else latest_checkpoint(train / "checkpoints")
    if last is not None:
        log.info("sweep point %s: resuming from checkpoint %s", job.name, last)


@contextlib.contextmanager
def _log_to(path: Path, enabled: bool):
    """zhtune's INFO log appended to ``path`` for the duration (a worker has no console)."""
    if not enabled:
        yield
        return
    logger = logging.getLogger("zhtune")
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        handler.close()


def save_job(job: PointJob, path: Path) -> Path:
    return atomic_write_json(path, asdict(job))


def load_job(path: str | Path) -> PointJob:
    raw = read_json(path)
    return PointJob(**{**raw, "marker": Marker(**raw["marker"])})


if __name__ == "__main__":
    try:
        run_point(load_job(sys.argv[1]))
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
