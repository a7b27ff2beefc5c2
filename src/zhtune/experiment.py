"""`zhtune run`: the whole experiment in one output folder, one stage after another.

baseline eval -> prepare -> train -> eval of the adapter -> compare -> report

Each stage has a fingerprint of everything it depends on (settings, inputs, zhtune version). A stage
whose folder holds a finished marker with the same fingerprint is skipped; a stage whose settings
changed is redone from scratch; an interrupted stage is started again (training resumes from its
last checkpoint). The baseline evaluation depends only on the model and the evaluation settings, so
it is cached under ZHTUNE_HOME/baselines and shared by every run and sweep that uses them.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from zhtune import __version__
from zhtune.artifacts import (begin_stage, finish_stage, fingerprint, provenance, read_eval_index,
                              stage_is_current, utc_timestamp)
from zhtune.config import ExperimentConfig, config_to_dict, save_resolved
from zhtune.io import atomic_write_json, default_data_dir, read_json, zhtune_home

log = logging.getLogger(__name__)

STAGES = ("baseline", "prepare", "train", "evaluate", "compare", "report")


@dataclass
class ExperimentResult:
    out_dir: Path
    baseline_dir: Path
    train_dir: Path
    eval_dir: Path
    compare_dir: Path
    report_dir: Path
    ran: list[str] = field(default_factory=list)  # stages computed in this call
    skipped: list[str] = field(default_factory=list)  # stages whose outputs were up to date


    def record(self, name: str, ran: bool) -> None:
        (self.ran if ran else self.skipped).append(name)


def run_stage(name: str, stage_dir: Path, fp: str, work: Callable[[Path], None], force: bool = False) -> bool:
    """Run ``work(stage_dir)`` unless the stage is up to date (the skip rule: zhtune.artifacts).
    True if it ran."""
    from zhtune import distributed

    # Under a distributed launch (train.num_processes) rank 0 decides and writes the markers; every
    # process runs the work, which writes on rank 0 only.
    if not force and distributed.broadcast_from_main(stage_is_current(stage_dir, fp)):
        log.info("stage %-8s up to date (%s)", name, stage_dir)
        return False
    if distributed.is_main():
        begin_stage(stage_dir, name, fp, force=force)
    distributed.barrier()
    log.info("stage %-8s running -> %s", name, stage_dir)
    t0 = time.time()
    work(stage_dir)
    distributed.barrier()
    if distributed.is_main():
        finish_stage(stage_dir, name, fp, time.time() - t0)
    return True


def main_process_only(work: Callable[[Path], object]) -> Callable[[Path], object]:
    """A stage that one process does (data preparation, comparison, report): rank 0's."""
    from zhtune import distributed

    return lambda d: work(d) if distributed.is_main() else None


def stage_fingerprints(cfg: ExperimentConfig, data_dir: Path | None) -> dict[str, str]:
    """Each stage's fingerprint. They chain: a stage's includes the fingerprints of its inputs."""
    fps = {"baseline": baseline_fingerprint(cfg, data_dir)}
    fps["prepare"] = fingerprint("prepare", cfg.model.model_dump(exclude={"device", "dtype", "quantization"}),
                                 config_to_dict(cfg.data), str(data_dir), __version__)
    fps["train"] = fingerprint("train", fps["prepare"], config_to_dict(cfg.lora),
                               cfg.train.model_dump(exclude={"report_to"}),
                               cfg.model.model_dump(exclude={"device"}))
    fps["evaluate"] = fingerprint("evaluate", fps["train"], fps["baseline"], config_to_dict(cfg.eval))
    fps["compare"] = fingerprint("compare", fps["evaluate"], config_to_dict(cfg.analysis))
    fps["report"] = fingerprint("report", fps["compare"])
    return fps


def baseline_fingerprint(cfg: ExperimentConfig, data_dir: Path | None) -> str:
    model = cfg.model.model_dump(exclude={"device"})
    ev = cfg.eval.model_dump(exclude={"adapter_scales", "batch_size", "batch_tokens"})
    return fingerprint("baseline", model, ev, str(data_dir), __version__)


def baseline_dir(cfg: ExperimentConfig, data_dir: Path | None) -> Path:
    root = Path(cfg.output.baseline_cache) if cfg.output.baseline_cache else zhtune_home() / "baselines"
    return root / baseline_fingerprint(cfg, data_dir)


def evaluate_baseline(cfg: ExperimentConfig, data_dir: Path | None, force: bool = False) -> bool:
    """The baseline stage: the base model evaluated into the shared cache (also run alone, once,
    by a sweep before its grid points start). True if it ran."""
    from zhtune.eval.suite import run_eval

    return run_stage("baseline", baseline_dir(cfg, data_dir), baseline_fingerprint(cfg, data_dir),
                     lambda d: run_eval(cfg.model, cfg.eval, d, data_dir=data_dir, include_base=True), force)


def run_experiment(cfg: ExperimentConfig, *, data_dir: str | Path | None = None,
                   force: tuple[str, ...] = (), registration: dict | None = None) -> ExperimentResult:
    """All stages; ``registration``: what zhtune.registration.check_registration found, recorded in
    experiment.json and cited by the report."""
    from zhtune.analysis.forgetting import compare_runs
    from zhtune.analysis.report import build_report
    from zhtune.data.sft import prepare_dataset
    from zhtune.eval.suite import check_eval_dtype, run_eval
    from zhtune.tracking import start_experiment
    from zhtune.train.lora import train_lora
    from zhtune.models.loading import pick_device
    from zhtune.train.probes import check_probes_supported
    from zhtune.train.trainer import zero_stage

    from zhtune import distributed, memory
    from zhtune.launch import launch, should_launch

    launched = utc_timestamp()
    data_dir = default_data_dir(data_dir or cfg.data.data_dir)
    if data_dir is not None:
        data_dir = data_dir.resolve()
    out = Path(cfg.output.dir)
    if distributed.is_main():
        out.mkdir(parents=True, exist_ok=True)
        save_resolved(cfg, out)
    unknown = set(force) - set(STAGES) - {"all"}
    if unknown:
        from zhtune.errors import UserError

        raise UserError(f"--force: unknown stage(s) {', '.join(sorted(unknown))}; "
                        f"stages are {', '.join(STAGES)} or all")
    forced = set(STAGES) if "all" in force else set(force)
    check_eval_dtype(cfg.model)  # before training, not at the first evaluation after it
    check_probes_supported(bool(cfg.train.probes.every_steps), zero_stage(cfg.train.deepspeed))
    if should_launch(cfg.train.num_processes):  # --nproc N: this same run under torchrun
        launch(cfg.train.num_processes, ["run", str(out / "config.resolved.yaml"), *(
            ["--data-dir", str(data_dir)] if data_dir else []), *[a for f in force for a in ("--force", f)]])
        return launched_result(cfg, data_dir)
    distributed.init_process_group(cpu=pick_device(cfg.model.device).type == "cpu")
    res = ExperimentResult(out_dir=out, baseline_dir=baseline_dir(cfg, data_dir),
                           train_dir=out / "train", eval_dir=out / "eval",
                           compare_dir=out / "compare", report_dir=out / "report")

    fps = stage_fingerprints(cfg, data_dir)
    fp_prep, fp_train, fp_eval = fps["prepare"], fps["train"], fps["evaluate"]
    fp_cmp, fp_report = fps["compare"], fps["report"]
    prepared = out / "data"
    # rank 0 logs; tracking.backend none does nothing and imports nothing
    tracker = start_experiment(cfg if distributed.is_main() else cfg.model_copy(
        update={"tracking": cfg.tracking.model_copy(update={"backend": "none"})}), fps)

    timings: dict = {"seconds_by_stage": {}, "memory_at_start": memory.snapshot(), "memory_after_stage": {}}

    def measured(name: str, run: Callable[[], bool]) -> None:
        """Run a stage; then free what it left (the trained model before evaluation loads) and
        record the time and the memory still held at the boundary."""
        t0 = time.time()
        res.record(name, run())
        memory.release()
        timings["seconds_by_stage"][name] = round(time.time() - t0, 3)
        timings["memory_after_stage"][name] = memory.snapshot()

    def stage(name: str, stage_dir: Path, fp: str, work: Callable[[Path], object]) -> None:
        with tracker.stage(name, stage_dir):  # logs the stage's outputs; a failure ends the run as failed
            measured(name, lambda: run_stage(name, stage_dir, fp, work, name in forced))

    with tracker.stage("baseline", res.baseline_dir):
        measured("baseline", lambda: evaluate_baseline(cfg, data_dir, "baseline" in forced))
    stage("prepare", prepared, fp_prep,
          main_process_only(lambda d: prepare_dataset(cfg, d, data_dir=data_dir)))
    stage("train", res.train_dir, fp_train,
          lambda d: train_lora(cfg, d, dataset_dir=prepared, data_dir=data_dir, resume=True))
    stage("evaluate", res.eval_dir, fp_eval,
          lambda d: run_eval(cfg.model, cfg.eval, d, data_dir=data_dir, include_base=False,
                             adapters=[str(res.train_dir / "adapter")],
                             adapter_labels=[cfg.name], scales=cfg.eval.adapter_scales))
    tuned = tuned_eval_dir(res.eval_dir)
    stage("compare", res.compare_dir, fp_cmp,
          main_process_only(lambda d: compare_runs(res.baseline_dir / "base", tuned, cfg.analysis, output_dir=d)))
    stage("report", res.report_dir, fp_report,  # reads the compare stage's comparison.json
          main_process_only(lambda d: build_report(
              comparisons=[read_json(res.compare_dir / "comparison.json")], train_dir=res.train_dir,
              scale_dir=res.eval_dir if len(cfg.eval.adapter_scales) > 1 else None,
              output_dir=d, title=cfg.name, analysis=cfg.analysis,
              registration=registration)))
    if not distributed.is_main():
        return res
    timings["total_seconds"] = round(sum(timings["seconds_by_stage"].values()), 3)
    atomic_write_json(out / "timings.json", timings)
    atomic_write_json(out / "experiment.json", {
        "name": cfg.name, "stages": {s: d for s, d in zip(
            STAGES, map(str, (res.baseline_dir, prepared, res.train_dir, res.eval_dir,
                              res.compare_dir, res.report_dir)))},
        "ran": res.ran, "skipped": res.skipped, "zhtune_version": __version__,
        "launched": launched, "finished": utc_timestamp(), "provenance": provenance(),
        "registration": registration})
    tracker.finish()
    return res


def launched_result(cfg: ExperimentConfig, data_dir: Path | None) -> ExperimentResult:
    """What a run in several processes did, read back from its ``experiment.json``."""
    from zhtune.io import read_json

    out = Path(cfg.output.dir)
    info = read_json(out / "experiment.json")
    return ExperimentResult(out_dir=out, baseline_dir=baseline_dir(cfg, data_dir), train_dir=out / "train",
                            eval_dir=out / "eval", compare_dir=out / "compare", report_dir=out / "report",
                            ran=info["ran"], skipped=info["skipped"])


def tuned_eval_dir(eval_dir: Path) -> Path:
    """The adapter's evaluation at scale 1.0 (or the only one) inside a multi-run eval folder."""
    labels = [r["label"] for r in read_eval_index(eval_dir)]
    full = [lab for lab in labels if "@scale-" not in lab] or [
        lab for lab in labels if lab.endswith("@scale-1") or lab.endswith("@scale-1.0")] or labels
    return eval_dir / full[0]
