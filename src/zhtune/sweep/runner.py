"""`zhtune sweep`, the part every launcher shares: expand the grid, evaluate the baseline once,
hand the unfinished points to the launcher, retry lost workers, then write the results."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from zhtune.config import ExperimentConfig, TrackingConfig
from zhtune.artifacts import stage_is_current
from zhtune.experiment import baseline_dir, stage_fingerprints
from zhtune.io import default_data_dir
from zhtune.sweep.evidence import grid_evidence
from zhtune.sweep.grid import SweepPoint, grid_points
from zhtune.sweep.launcher import Launcher, Running, make_launcher
from zhtune.sweep.point import BaselineJob, Marker, PointJob, write_config
from zhtune.sweep.progress import SweepProgress
from zhtune.sweep.results import collect_results, write_results
from zhtune.tracking import log_sweep

log = logging.getLogger(__name__)


def run_sweep(cfg: ExperimentConfig, *, extra_grid: dict[str, list[Any]] | None = None,
              data_dir: str | Path | None = None, workers: int | None = None,
              devices: list[str] | None = None, registration: dict | None = None) -> dict:
    """Run every unfinished grid point with ``cfg.sweep.launcher`` and write results.csv/.md,
    pareto.png/.svg, learning_forgetting.png/.svg and sweep.json into ``cfg.output.dir``. Returns the
    summary. ``registration``: what check_registration found for the sweep's design, cited there."""
    # Not resolved: a path that differs between nodes (a per-node symlink) must stay as given.
    out_root = Path(cfg.output.dir).absolute()
    output = {"dir": str(out_root)}
    if cfg.sweep.launcher != "local" and not cfg.output.baseline_cache:
        # The shared baseline must be where every node sees it (ZHTUNE_HOME may be node-local).
        output["baseline_cache"] = str(out_root / "baselines")
    cfg = cfg.model_copy(update={"output": cfg.output.model_copy(update=output)})
    # The driver logs every point from its folder once the sweep is done (tracking.log_sweep); the
    # points themselves log nothing, so workers need no access to the tracker.
    tracking, cfg = cfg.tracking, cfg.model_copy(update={"tracking": TrackingConfig()})
    data = default_data_dir(data_dir or cfg.data.data_dir)
    data = data.resolve() if data else None  # as `zhtune run` has it in its fingerprints
    points = grid_points(cfg, extra_grid, out_root)
    launcher = make_launcher(cfg.sweep, max(p.config.train.num_processes for p in points), workers=workers,
                             devices=devices)
    log.info("sweep %s: %d runs over %s with the %s launcher", cfg.name, len(points),
             ", ".join(points[0].values), cfg.sweep.launcher)

    out_root.mkdir(parents=True, exist_ok=True)
    marker = Marker.create(out_root)
    baseline = BaselineJob(write_config(cfg, out_root / "sweep-config.yaml"), _str(data), marker)
    jobs = [PointJob(p.name, write_config(p.config, p.out_dir / "sweep-point.yaml"), _str(data),
                     marker, capture_log=launcher.remote) for p in points]
    todo = [job for job, p in zip(jobs, points) if not _finished(p, data)]
    failed: dict[str, str] = {}
    with SweepProgress(len(points)) as progress:
        for job in jobs:
            if job not in todo:
                progress.finished(job.name, "done", "(earlier)")
        if todo:
            try:
                launcher.open(out_root, marker)
                if not stage_is_current(baseline_dir(cfg, data), stage_fingerprints(cfg, data)["baseline"]):
                    progress.line("baseline", "running")
                    launcher.run_baseline(baseline)
                    progress.line("baseline", "done")
                failed = dispatch(launcher, todo, cfg.sweep.max_retries, progress)
            except BaseException as err:  # Ctrl-C, or an error: leave no job running or queued
                launcher.cancel()
                if isinstance(err, KeyboardInterrupt):
                    log.warning("sweep cancelled; the same command finishes what is missing")
                raise
            finally:
                launcher.close()
    rows = collect_results(points, failed)
    margin = cfg.analysis.gain_margin if cfg.sweep.criterion == "chinese_gain" else cfg.analysis.forgetting_margin
    # Settings compared with each other on the same questions; the best is named only with evidence.
    evidence = grid_evidence(points, rows, baseline_dir(cfg, data) / "base", criterion=cfg.sweep.criterion,
                             margin=margin)
    summary = write_results(out_root, rows, failed, evidence, registration)
    log_sweep(tracking, cfg, points, data, summary)  # tracking.backend none: does nothing
    return summary


def dispatch(launcher: Launcher, jobs: list[PointJob], max_retries: int,
             progress: SweepProgress) -> dict[str, str]:
    """Run ``jobs`` to the end; a job whose worker died is started again (it resumes from its last
    checkpoint) up to ``max_retries`` times. Returns the failed points and why."""
    running: list[Running] = launcher.submit(jobs)
    for job in jobs:
        progress.line(job.name, "queued")
    failed: dict[str, str] = {}
    while running:
        progress.refresh([r.job for r in running])
        for run, outcome in launcher.wait(running):
            running.remove(run)
            job = run.job
            if outcome.status == "done":
                progress.finished(job.name, "done")
            elif outcome.status == "died" and job.attempt <= max_retries:
                progress.line(job.name, "retrying", f"({outcome.message})")
                log.warning("sweep point %s: worker lost (%s); starting attempt %d from its last "
                            "checkpoint", job.name, outcome.message, job.attempt + 1)
                running += launcher.submit([job.retry()])
            else:
                tries = f" (after {job.attempt} attempts)" if job.attempt > 1 else ""
                failed[job.name] = outcome.message + tries
                progress.finished(job.name, "failed", failed[job.name])
    return failed


def _finished(point: SweepPoint, data_dir: Path | None) -> bool:
    """True if the point's `zhtune run` would skip every stage (its report is up to date)."""
    return stage_is_current(point.out_dir / "report", stage_fingerprints(point.config, data_dir)["report"])


def _str(path: Path | None) -> str | None:
    return str(path) if path else None
