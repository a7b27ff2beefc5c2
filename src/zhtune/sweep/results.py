"""`zhtune sweep`: a grid of experiments sharing one baseline, ending in a trade-off table.

Each grid point is an ordinary `zhtune run` in ``OUT/runs/<name>``, so finished points are skipped
and interrupted ones resume. The baseline is computed once, before any worker starts, and every
run finds it in the shared cache.
"""
from __future__ import annotations

import csv
import io
import itertools
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from zhtune.config import ExperimentConfig, apply_overrides, config_from_dict, config_to_dict
from zhtune.errors import UserError
from zhtune.io import atomic_write_json, atomic_write_text, read_json

log = logging.getLogger(__name__)


def split_grid_overrides(items: list[str]) -> tuple[dict[str, list[Any]], list[str]]:
    """``lora.rank=4,8`` is a grid axis; ``train.max_steps=20`` or ``eval.benchmarks=[a,b]`` a plain
    override (commas inside brackets do not make an axis)."""
    grid: dict[str, list[Any]] = {}
    plain: list[str] = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"sweep: {item!r} is not of the form key.path=value[,value...]")
        if "," in value and not value.strip().startswith(("[", "{")):
            grid[key.strip()] = [yaml.safe_load(v) for v in value.split(",")]
        else:
            plain.append(item)
    return grid, plain


def expand_grid(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def point_name(point: dict[str, Any]) -> str:
    """``{"lora.rank": 4, "lora.dropout": 0.05}`` -> ``rank4-dropout0.05``."""
    return "-".join(f"{k.rsplit('.', 1)[-1]}{v}" for k, v in point.items()) or "default"


def point_config(cfg: ExperimentConfig, point: dict[str, Any], out_root: Path) -> ExperimentConfig:
    raw = config_to_dict(cfg)
    raw["sweep"] = {}
    raw = apply_overrides(raw, [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip()}"
                                for k, v in point.items()], "sweep grid")
    raw["name"] = f"{cfg.name}/{point_name(point)}"
    raw["output"]["dir"] = str(out_root / "runs" / point_name(point))
    return config_from_dict(raw, f"sweep point {point_name(point)}")


def _run_in_subprocess(cfg: ExperimentConfig, device: str | None, data_dir: Path | None) -> subprocess.Popen:
    out = Path(cfg.output.dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg_path = out / "sweep-point.yaml"
    atomic_write_text(cfg_path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False, allow_unicode=True))
    env = dict(os.environ)
    if device and device.startswith("cuda:"):
        env["CUDA_VISIBLE_DEVICES"] = device.split(":", 1)[1]
    cmd = [sys.executable, "-m", "zhtune", "-q", "run", str(cfg_path)]
    if data_dir:
        cmd += ["--data-dir", str(data_dir)]
    log_file = open(out / "sweep-worker.log", "a")
    return subprocess.Popen(cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT)


def run_sweep(cfg: ExperimentConfig, *, extra_grid: dict[str, list[Any]] | None = None,
              data_dir: str | Path | None = None, workers: int | None = None,
              devices: list[str] | None = None) -> dict:
    from zhtune.experiment import baseline_dir, run_experiment, run_stage, ExperimentResult
    from zhtune.eval.suite import run_eval
    from zhtune.experiment import baseline_fingerprint
    from zhtune.io import default_data_dir

    grid = {**cfg.sweep.grid, **(extra_grid or {})}
    if not grid:
        raise UserError("sweep: no grid; give sweep.grid in the config or key=v1,v2 on the command line")
    out_root = Path(cfg.output.dir)
    points = expand_grid(grid)
    configs = [point_config(cfg, p, out_root) for p in points]
    data_dir = default_data_dir(data_dir or cfg.data.data_dir)
    data_dir = data_dir.resolve() if data_dir else None
    log.info("sweep %s: %d runs over %s", cfg.name, len(points), ", ".join(grid))

    # One baseline for all points (their model and eval settings are the same unless the grid
    # varies them, in which case each run computes and caches its own).
    holder = ExperimentResult(out_root, baseline_dir(cfg, data_dir), *[out_root] * 4)
    run_stage("baseline", holder.baseline_dir, baseline_fingerprint(cfg, data_dir),
              lambda d: run_eval(cfg.model, cfg.eval, d, data_dir=data_dir, include_base=True), holder)

    devices = devices or cfg.sweep.devices
    workers = len(devices) if devices else (workers or cfg.sweep.workers)
    failed: list[str] = []
    if workers <= 1:
        for c in configs:
            try:
                run_experiment(c, data_dir=data_dir)
            except UserError:
                raise
            except Exception as err:  # one failed point must not lose the others
                log.exception("sweep point %s failed: %s", c.name, err)
                failed.append(c.name)
    else:
        pending = list(configs)
        running: dict[subprocess.Popen, tuple[ExperimentConfig, str | None]] = {}
        free = list(devices) if devices else [None] * workers
        while pending or running:
            while pending and free:
                c, dev = pending.pop(0), free.pop(0)
                running[_run_in_subprocess(c, dev, data_dir)] = (c, dev)
            proc = next(iter(running))
            proc.wait()
            c, dev = running.pop(proc)
            free.append(dev)
            if proc.returncode != 0:
                failed.append(c.name)
                log.error("sweep point %s failed (exit %s); see %s", c.name, proc.returncode,
                          Path(c.output.dir) / "sweep-worker.log")
    table = collect_results(points, configs)
    summary = write_results(out_root, table, failed)
    return summary


def collect_results(points: list[dict], configs: list[ExperimentConfig]) -> list[dict]:
    rows = []
    for point, c in zip(points, configs):
        out = Path(c.output.dir)
        row: dict[str, Any] = {"run": point_name(point), **point}
        cmp_file = out / "compare" / "comparison.json"
        if not cmp_file.exists():
            row["status"] = "unfinished"
            rows.append(row)
            continue
        cmp = read_json(cmp_file)
        row.update(status="done", **headline_numbers(cmp))
        meta_file = out / "train" / "adapter" / "zhtune_adapter.json"
        if meta_file.exists():
            meta = read_json(meta_file)
            row["train_seconds"] = meta.get("train_seconds") or meta.get("train_runtime")
            row["trainable_params"] = meta.get("trainable_params")
        rows.append(row)
    return rows


def headline_numbers(cmp: dict) -> dict:
    """Chinese gain and English forgetting (points, with 95% intervals) from a comparison.json."""
    out: dict[str, Any] = {}
    for name in ("chinese_gain", "english_forgetting"):
        fig = cmp.get(name)
        if fig is None:  # the sweep evaluated no benchmark of that language
            raise UserError(f"sweep: the comparison has no {name.replace('_', ' ')}; evaluate at "
                            "least one Chinese (ceval, cmmlu) and one English (mmlu, gsm8k) benchmark")
        out[name] = fig["change_points"]
        out[f"{name}_ci"] = [fig["ci_low"], fig["ci_high"]]
    return out


def pareto_front(rows: list[dict]) -> list[str]:
    """Runs not dominated in (more Chinese gain, less English forgetting)."""
    done = [r for r in rows if r.get("status") == "done"]
    front = []
    for r in done:
        dominated = any(o is not r and o["chinese_gain"] >= r["chinese_gain"]
                        and o["english_forgetting"] <= r["english_forgetting"]
                        and (o["chinese_gain"] > r["chinese_gain"]
                             or o["english_forgetting"] < r["english_forgetting"]) for o in done)
        if not dominated:
            front.append(r["run"])
    return front


def write_results(out_root: Path, rows: list[dict], failed: list[str]) -> dict:
    from zhtune.analysis.plots import plot_pareto

    front = pareto_front(rows)
    done = [r for r in rows if r.get("status") == "done"]
    # Best: the most Chinese gain among Pareto runs whose English forgetting is not significant
    # (interval reaches zero or above); failing that, the best gain-minus-forgetting.
    safe = [r for r in done if r["run"] in front and r["english_forgetting_ci"][0] <= 0]
    best = max(safe or done, key=lambda r: (r["chinese_gain"] - (0 if safe else r["english_forgetting"])),
               default=None)
    columns = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns + ["pareto"])
    writer.writeheader()
    for r in rows:
        writer.writerow({**r, "pareto": r["run"] in front})
    atomic_write_text(out_root / "results.csv", buf.getvalue())
    md = ["| " + " | ".join(columns + ["pareto"]) + " |", "|" + "---|" * (len(columns) + 1)]
    for r in rows:
        md.append("| " + " | ".join(_fmt(r.get(c)) for c in columns) + f" | {'yes' if r['run'] in front else ''} |")
    if best:
        md.append(f"\nBest settings: **{best['run']}** (Chinese gain {best['chinese_gain']:+.2f} points, "
                  f"English forgetting {best['english_forgetting']:+.2f} points).")
    if failed:
        md.append(f"\nFailed runs: {', '.join(failed)}")
    atomic_write_text(out_root / "results.md", "\n".join(md) + "\n")
    if done:
        plot_pareto([{"label": r["run"], "chinese_gain": r["chinese_gain"],
                      "english_forgetting": r["english_forgetting"]} for r in done],
                    out_root / "pareto")
    summary = {"runs": rows, "pareto": front, "best": best["run"] if best else None, "failed": failed}
    atomic_write_json(out_root / "sweep.json", summary)
    return summary


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.0f}"
    if isinstance(v, list):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return "" if v is None else str(v)
