"""Experiment tracking: the whole experiment in MLflow, Weights & Biases or TensorBoard.

``tracking.backend`` (``--report-to``) picks the tracker; ``none`` (the default) imports none of them.
What is logged is read from the files each stage writes (the contracts in docs/ARCHITECTURE.md), never
from the code that computed them, so a stage skipped as up to date is logged like one that ran:

- parameters: the resolved config (``config.<section>.<key>``) and the stage fingerprints
  (``fingerprint.<stage>``; ``fingerprint`` is the report's, which chains all the others);
- metrics: each evaluation's per-benchmark accuracy, standard error and question count
  (``base/<benchmark>/accuracy``, ``tuned/…``; other adapter scales ``tuned_scale_0.5/…``), bits per
  character, the training log by step (``train/loss``, ``train/probe/…``), and the comparison's
  headline changes with their intervals (``compare/english_forgetting/change_points``, ``…/ci_low``;
  ``compare/pooled_including_floors/…`` where a language's benchmarks are all at chance);
- results (MLflow tags, W&B summary, TensorBoard text): the verdicts (``verdict/english_forgetting``);
- artifacts: the report folder (report.html, .md, .json, charts).

A sweep is one parent run with a child run per grid point (MLflow nested runs, a W&B group,
TensorBoard sub-folders that its HPARAMS tab compares). The driver logs the points from their
folders once they have finished, so workers on cluster nodes need no access to the tracker.
"""
from __future__ import annotations

import json
import logging
import math
import re
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from zhtune.errors import UserError
from zhtune.io import iter_jsonl, read_json

log = logging.getLogger(__name__)

FIGURES = ("chinese_gain", "english_forgetting")
INTERVAL_KEYS = ("change_points", "ci_low", "ci_high", "p_value")


# ----------------------------------------------------------------------------------- what is logged
def flat_params(tree: dict, prefix: str = "config") -> dict[str, str]:
    """``{"lora": {"rank": 8}}`` -> ``{"config.lora.rank": "8"}``; lists and None as JSON text."""
    out: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            out.update(flat_params(value, name))
        else:
            out[name] = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return out


def experiment_params(config: dict, fingerprints: dict[str, str]) -> dict[str, str]:
    params = flat_params(config)
    params.update({f"fingerprint.{stage}": fp for stage, fp in fingerprints.items()})
    params["fingerprint"] = fingerprints["report"]
    return params


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value) else None


def summary_metrics(summary: dict, prefix: str) -> dict[str, float]:
    """Per-benchmark accuracy, standard error and n, and bits per character, from a summary.json."""
    out = {}
    for bench, stats in (summary.get("benchmarks") or {}).items():
        for key in ("accuracy", "stderr", "n"):
            if _number(stats.get(key)) is not None:
                out[f"{prefix}/{bench}/{key}"] = _number(stats[key])
    for lang, stats in (summary.get("perplexity") or {}).items():
        if isinstance(stats, dict) and _number(stats.get("bits_per_char")) is not None:
            out[f"{prefix}/perplexity/{lang}/bits_per_char"] = _number(stats["bits_per_char"])
    return out


def eval_prefix(summary: dict) -> str:
    """``base``, ``tuned``, or ``tuned_scale_0.5`` for an adapter evaluated at another scale."""
    if summary.get("adapter") is None:
        return "base"
    scale = summary.get("adapter_scale")
    return "tuned" if scale in (None, 1, 1.0) else f"tuned_scale_{scale:g}"


def comparison_values(cmp: dict) -> tuple[dict[str, float], dict[str, str]]:
    """The headline changes and per-benchmark changes with their intervals (metrics) and every
    verdict (text), from a comparison.json."""
    metrics, verdicts = {}, {}
    floors = cmp.get("pooled_including_floors") or {}  # the figures when a language is all at chance
    parts = ([(f, cmp.get(f)) for f in FIGURES] + [(f"pooled_including_floors/{f}", floors.get(f)) for f in FIGURES]
             + [(f"benchmark/{b}", s) for b, s in (cmp.get("benchmarks") or {}).items()])
    for name, stats in parts:
        if not stats:
            continue
        for key in INTERVAL_KEYS + ("base_accuracy", "tuned_accuracy", "margin"):
            if _number(stats.get(key)) is not None:
                metrics[f"compare/{name}/{key}"] = _number(stats[key])
        if stats.get("verdict"):
            verdicts[f"verdict/{name}"] = str(stats["verdict"])
    return metrics, verdicts


def training_steps(train_dir: Path) -> list[tuple[int, dict[str, float]]]:
    """``train_log.jsonl`` as (step, {train/<key>: value}), one entry per step, in step order."""
    by_step: dict[int, dict[str, float]] = {}
    log_file = train_dir / "train_log.jsonl"
    if not log_file.is_file():
        return []
    for _, row in iter_jsonl(log_file):
        if not isinstance(row, dict) or _number(row.get("step")) is None:
            continue
        values = {f"train/{k}": _number(v) for k, v in row.items()
                  if k not in ("step", "epoch") and _number(v) is not None}
        by_step.setdefault(int(row["step"]), {}).update(values)
    return sorted(by_step.items())


def log_stage(tracker: "Tracker", name: str, stage_dir: Path) -> None:
    """Log what stage ``name`` wrote into ``stage_dir`` (nothing for a stage with no results)."""
    stage_dir = Path(stage_dir)
    if name == "baseline" and (stage_dir / "base" / "summary.json").is_file():
        tracker.log_metrics(summary_metrics(read_json(stage_dir / "base" / "summary.json"), "base"))
    elif name == "train":
        for step, values in training_steps(stage_dir):
            tracker.log_metrics(values, step=step)
    elif name == "evaluate" and (stage_dir / "index.json").is_file():
        for run in read_json(stage_dir / "index.json").get("runs", []):
            summary = read_json(stage_dir / run["dir"] / "summary.json")
            tracker.log_metrics(summary_metrics(summary, eval_prefix(summary)))
    elif name == "compare" and (stage_dir / "comparison.json").is_file():
        metrics, verdicts = comparison_values(read_json(stage_dir / "comparison.json"))
        tracker.log_metrics(metrics)
        tracker.log_results(verdicts)
    elif name == "report" and (stage_dir / "report.html").is_file():
        tracker.log_artifacts(stage_dir, "report")


# ----------------------------------------------------------------------------------- trackers
class Tracker:
    """One run in a tracker. This base class is backend ``none``: every call does nothing."""
    enabled = False

    def log_params(self, params: dict[str, str]) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None: ...
    def log_results(self, values: dict[str, str]) -> None: ...
    def log_artifacts(self, folder: Path, name: str) -> None: ...
    def log_files(self, files: list[Path], name: str) -> None: ...
    def finish(self, failed: bool = False) -> None: ...

    def child(self, name: str, group: str | None = None) -> "Tracker":
        return Tracker()

    @contextmanager
    def stage(self, name: str, stage_dir: Path) -> Iterator[None]:
        """Run a stage; log its outputs once it is done, or end the run as failed if it raises."""
        try:
            yield
        except BaseException:
            self.finish(failed=True)
            raise
        if self.enabled:
            log_stage(self, name, stage_dir)


def _key(name: str) -> str:
    """A metric or parameter name every backend accepts (MLflow: letters, digits, _ - . / : and space)."""
    return re.sub(r"[^\w\-./: ]", "_", name)[:250]


def _chunks(items: list, n: int) -> Iterator[list]:
    for i in range(0, len(items), n):
        yield items[i:i + n]


class MlflowTracker(Tracker):
    """A run through ``MlflowClient`` (no global active run); a child carries mlflow.parentRunId."""
    enabled = True

    def __init__(self, name: str, *, uri: str | None, project: str | None, parent: "MlflowTracker | None" = None):
        from mlflow import MlflowClient

        self.uri, self.project = uri, project or "zhtune"
        self.client = MlflowClient(tracking_uri=uri)
        experiment = self.client.get_experiment_by_name(self.project)
        self.experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(self.project)
        tags = {"mlflow.parentRunId": parent.run_id} if parent else {}
        self.run_id = self.client.create_run(self.experiment_id, run_name=name, tags=tags).info.run_id
        self.finished = False

    def log_params(self, params):
        from mlflow.entities import Param

        items = [Param(_key(k), str(v)[:6000]) for k, v in params.items()]
        for chunk in _chunks(items, 100):
            self.client.log_batch(self.run_id, params=chunk)

    def log_metrics(self, metrics, step=None):
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(_key(k), float(v), now, step or 0) for k, v in metrics.items()]
        for chunk in _chunks(items, 1000):
            self.client.log_batch(self.run_id, metrics=chunk)

    def log_results(self, values):
        from mlflow.entities import RunTag

        for chunk in _chunks([RunTag(_key(k), str(v)) for k, v in values.items()], 100):
            self.client.log_batch(self.run_id, tags=chunk)

    def log_artifacts(self, folder, name):
        self.client.log_artifacts(self.run_id, str(folder), name)

    def log_files(self, files, name):
        for path in files:
            self.client.log_artifact(self.run_id, str(path), name)

    def finish(self, failed=False):
        if not self.finished:
            self.client.set_terminated(self.run_id, "FAILED" if failed else "FINISHED")
            self.finished = True

    def child(self, name, group=None):
        return MlflowTracker(name, uri=self.uri, project=self.project, parent=self)


class WandbTracker(Tracker):
    """A W&B run; the runs of a sweep share a group (WANDB_MODE=offline works without a network)."""
    enabled = True

    def __init__(self, name: str, *, project: str | None, out_dir: Path, group: str | None = None,
                 job_type: str = "experiment"):
        import wandb

        self.project, self.out_dir = project or "zhtune", Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=self.project, name=name, group=group, job_type=job_type,
                              dir=str(self.out_dir), reinit="create_new")
        self.finished = False

    def log_params(self, params):
        self.run.config.update(params, allow_val_change=True)

    def log_metrics(self, metrics, step=None):
        if step is None:  # results, not a curve
            self.run.summary.update(metrics)
        else:
            self.run.log(metrics, step=step)

    def log_results(self, values):
        self.run.summary.update(values)

    def log_artifacts(self, folder, name):
        self._artifact(name, lambda a: a.add_dir(str(folder)))

    def log_files(self, files, name):
        self._artifact(name, lambda a: [a.add_file(str(p)) for p in files])

    def _artifact(self, name, add):
        import wandb

        artifact = wandb.Artifact(re.sub(r"[^\w\-.]", "_", f"{self.run.name}-{name}"), type=name)
        add(artifact)
        self.run.log_artifact(artifact)

    def finish(self, failed=False):
        if not self.finished:
            self.run.finish(exit_code=1 if failed else 0)
            self.finished = True

    def child(self, name, group=None):
        return WandbTracker(name, project=self.project, out_dir=self.out_dir, group=group, job_type="sweep-point")


class TensorBoardTracker(Tracker):
    """Event files in a log folder: scalars, the config and verdicts as text, and at the end the
    hyperparameters with the headline figures (the HPARAMS tab compares a sweep's points)."""
    enabled = True

    def __init__(self, log_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(log_dir)
        self.writer = SummaryWriter(log_dir=str(self.log_dir))
        self.params: dict[str, str] = {}
        self.last: dict[str, float] = {}
        self.finished = False

    def log_params(self, params):
        self.params.update(params)
        self.writer.add_text("config", "\n".join(f"    {k}: {v}" for k, v in sorted(params.items())))

    def log_metrics(self, metrics, step=None):
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step or 0)
        self.last.update(metrics)

    def log_results(self, values):
        for key, value in values.items():
            self.writer.add_text(key, value)

    def log_artifacts(self, folder, name):
        md = Path(folder) / "report.md"
        text = md.read_text(encoding="utf-8") if md.is_file() else ""
        self.writer.add_text(name, f"{Path(folder).resolve()}\n\n{text}")

    def log_files(self, files, name):
        for path in files:
            text = path.read_text(encoding="utf-8") if path.suffix in (".md", ".csv") else ""
            self.writer.add_text(f"{name}/{path.name}", f"{path.resolve()}\n\n{text}")

    def finish(self, failed=False):
        if self.finished:
            return
        headline = {k: v for k, v in self.last.items() if k.startswith("compare/") and k.endswith("change_points")}
        if headline and self.params:
            hparams = {k: _hparam(v) for k, v in self.params.items() if not k.startswith("fingerprint")}
            self.writer.add_hparams(hparams, {f"hparams/{k}": v for k, v in headline.items()}, run_name=".")
        self.writer.close()
        self.finished = True

    def child(self, name, group=None):
        return TensorBoardTracker(self.log_dir / name)


def _hparam(value: str) -> float | str:
    try:
        number = json.loads(value)
    except ValueError:
        return value
    return float(number) if _number(number) is not None else value


# ----------------------------------------------------------------------------------- opening
def open_tracker(tracking, *, name: str, out_dir: Path, group: str | None = None) -> Tracker:
    """The run for ``tracking`` (a TrackingConfig); backend ``none`` imports nothing and logs nothing."""
    backend = tracking.backend
    if backend == "none":
        return Tracker()
    module = {"mlflow": "mlflow", "wandb": "wandb", "tensorboard": "torch.utils.tensorboard"}[backend]
    try:
        __import__(module)
    except ImportError:
        extra = {"tensorboard": "tensorboard"}.get(backend, backend)
        raise UserError(f"tracking.backend {backend} needs the {extra} package: pip install 'zhtune[{extra}]'") from None
    if backend == "mlflow":
        return MlflowTracker(name, uri=tracking.uri, project=tracking.project)
    if backend == "wandb":
        return WandbTracker(name, project=tracking.project, out_dir=Path(tracking.uri or out_dir), group=group,
                            job_type="sweep" if group else "experiment")
    return TensorBoardTracker(Path(tracking.uri) if tracking.uri else Path(out_dir) / "tensorboard")


def start_experiment(cfg, fingerprints: dict[str, str]) -> Tracker:
    """The run of one `zhtune run`, with the resolved config and fingerprints as parameters."""
    from zhtune.config import config_to_dict

    tracker = open_tracker(cfg.tracking, name=cfg.name, out_dir=Path(cfg.output.dir))
    if tracker.enabled:
        tracker.log_params(experiment_params(config_to_dict(cfg), fingerprints))
    return tracker


def log_sweep(tracking, cfg, points: list, data_dir: Path | None, summary: dict) -> None:
    """A finished sweep: a parent run (the sweep's config, results.csv/md, sweep.json and the Pareto
    chart) with one child run per finished grid point, logged from the point's folder."""
    if tracking.backend == "none":
        return
    from zhtune.config import config_to_dict
    from zhtune.experiment import STAGES, baseline_dir, stage_fingerprints

    out_root = Path(cfg.output.dir)
    group = f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    parent = open_tracker(tracking, name=cfg.name, out_dir=out_root, group=group)
    try:
        parent.log_params(flat_params(config_to_dict(cfg.model_copy(update={"tracking": tracking}))))
        done = [p for p in points if any(r["run"] == p.name and r.get("status") == "done" for r in summary["runs"])]
        parent.log_results({"sweep/best": str(summary.get("best")), "sweep/pareto": ", ".join(summary["pareto"]),
                            "sweep/failed": ", ".join(summary["failed"])})
        for point in done:
            child = parent.child(point.name, group=group)
            fps = stage_fingerprints(point.config, data_dir)
            child.log_params({**experiment_params(config_to_dict(point.config), fps),
                              **{f"grid.{k}": json.dumps(v) for k, v in point.values.items()}})
            dirs = {"baseline": baseline_dir(point.config, data_dir), "prepare": point.out_dir / "data",
                    "train": point.out_dir / "train", "evaluate": point.out_dir / "eval",
                    "compare": point.out_dir / "compare", "report": point.out_dir / "report"}
            for stage in STAGES:
                log_stage(child, stage, dirs[stage])
            child.finish()
        parent.log_files([out_root / n for n in ("results.csv", "results.md", "sweep.json", "pareto.png")
                          if (out_root / n).is_file()], "sweep")
    except BaseException:
        parent.finish(failed=True)
        raise
    parent.finish()
