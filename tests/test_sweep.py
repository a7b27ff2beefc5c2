"""`zhtune sweep`: grid expansion, one shared baseline, results table, Pareto plot, resume."""
from __future__ import annotations

import csv
import json

import pytest

from zhtune.config import config_from_dict
from zhtune.errors import UserError
from zhtune.sweep import expand_grid, pareto_front, point_name, run_sweep, split_grid_overrides
from experiment_helpers import tiny_config


def test_grid_overrides_and_expansion():
    grid, plain = split_grid_overrides(["lora.rank=4,8", "lora.dropout=0.05,0.1",
                                        "train.max_steps=5", "eval.benchmarks=[ceval,mmlu]"])
    assert grid == {"lora.rank": [4, 8], "lora.dropout": [0.05, 0.1]}
    assert plain == ["train.max_steps=5", "eval.benchmarks=[ceval,mmlu]"]
    points = expand_grid(grid)
    assert len(points) == 4 and {"lora.rank": 8, "lora.dropout": 0.1} in points
    assert point_name(points[0]) == "rank4-dropout0.05"
    with pytest.raises(UserError):
        split_grid_overrides(["lora.rank"])


def test_pareto_front():
    rows = [{"run": "a", "status": "done", "chinese_gain": 3.0, "english_forgetting": 2.0},
            {"run": "b", "status": "done", "chinese_gain": 1.0, "english_forgetting": 0.0},
            {"run": "c", "status": "done", "chinese_gain": 0.5, "english_forgetting": 1.0},  # dominated by b
            {"run": "d", "status": "unfinished"}]
    assert pareto_front(rows) == ["a", "b"]


def test_small_sweep_completes_and_resumes(tiny_llama_dir, shared_data, tmp_path):
    raw = tiny_config(tiny_llama_dir, tmp_path / "sweep", tmp_path / "baselines")
    raw["eval"]["benchmarks"] = ["ceval", "mmlu"]
    raw["train"]["max_steps"] = 3
    raw["sweep"] = {"grid": {"lora.rank": [4, 8], "lora.dropout": [0.05, 0.1]}}
    summary = run_sweep(config_from_dict(raw), data_dir=shared_data)
    assert summary["failed"] == [] and len(summary["runs"]) == 4
    assert all(r["status"] == "done" for r in summary["runs"])
    with open(tmp_path / "sweep" / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["run"] for r in rows} == {"rank4-dropout0.05", "rank4-dropout0.1",
                                        "rank8-dropout0.05", "rank8-dropout0.1"}
    for col in ("chinese_gain", "english_forgetting", "train_seconds", "trainable_params"):
        assert all(r[col] != "" for r in rows), col
    assert int(rows[0]["trainable_params"]) < int(next(r for r in rows if r["run"].startswith("rank8"))["trainable_params"])
    assert (tmp_path / "sweep" / "pareto.png").stat().st_size > 1000
    assert (tmp_path / "sweep" / "learning_forgetting.png").stat().st_size > 1000
    md = (tmp_path / "sweep" / "results.md").read_text()
    assert "Best settings" in md and "What each factor does" in md
    # A tiny model after 3 steps: no setting can be told apart, so none is named best (the largest
    # point estimate is not a best setting), and all are listed with the questions to separate them.
    assert summary["best"] is None and "No setting is distinguishable" in md
    assert summary["grid"]["best"] is None and summary["best_set"]
    assert set(summary["best_set"]) <= {r["run"] for r in summary["runs"]}
    assert all(r["in_best_set"] in ("True", "False") for r in rows)
    assert {r["factor"] for r in summary["factor_effects"]["chinese_gain"]} == {"lora.rank", "lora.dropout"}

    # Interrupted sweep: one run's outputs lost -> only that run is redone; the finished ones are
    # not even started again.
    import shutil

    runs = tmp_path / "sweep" / "runs"
    finished = ("rank4-dropout0.05", "rank4-dropout0.1", "rank8-dropout0.05")
    before = {name: (runs / name / "experiment.json").stat().st_mtime_ns for name in finished}
    shutil.rmtree(runs / "rank8-dropout0.1" / "compare")
    shutil.rmtree(runs / "rank8-dropout0.1" / "report")
    run_sweep(config_from_dict(raw), data_dir=shared_data)
    for name in finished:
        assert (runs / name / "experiment.json").stat().st_mtime_ns == before[name], name
    exp = json.loads((tmp_path / "sweep" / "runs" / "rank8-dropout0.1" / "experiment.json").read_text())
    assert exp["ran"] == ["compare", "report"]


# ----------------------------------------------------------------------------------- GPUs per point
def test_each_point_reserves_one_gpu_per_training_process(tmp_path, monkeypatch):
    """A point trained with --nproc N (train.num_processes) starts N processes: it must hold N GPUs."""
    import shutil

    from zhtune.config import SweepConfig
    from zhtune.sweep.launcher import device_groups, point_gpus

    assert [point_gpus(SweepConfig(), n, True) for n in (1, 2, 8)] == [1, 2, 8]
    assert point_gpus(SweepConfig(), 2, False) == 0  # a CPU cluster: gloo processes
    assert point_gpus(SweepConfig(gpus_per_point=4), 2, True) == 4
    assert point_gpus(SweepConfig(gpus_per_point=0), 2, True) == 0
    with pytest.raises(UserError, match="gpus_per_point=1 but train.num_processes=2"):
        point_gpus(SweepConfig(gpus_per_point=1), 2, True)
    devices = ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]
    assert device_groups(devices, 1) == devices
    assert device_groups(devices, 2) == ["cuda:0,1", "cuda:2,3"]
    with pytest.raises(UserError, match="multiple of 2"):
        device_groups(devices[:3], 2)

    # The Slurm job array asks for them (submitit builds the executor without contacting Slurm).
    pytest.importorskip("submitit")
    from zhtune.sweep.launcher import make_launcher

    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/" + name)
    launcher = make_launcher(SweepConfig(launcher="slurm"), processes_per_point=2)
    launcher.open(tmp_path / "grid", None)
    assert launcher.executor._executor.parameters["gpus_per_node"] == 2
    # The local launcher gives each worker a group of devices: CUDA_VISIBLE_DEVICES=0,1 for one point.
    local = make_launcher(SweepConfig(), processes_per_point=2, devices=devices)
    assert local.workers == 2 and local.free == ["cuda:0,1", "cuda:2,3"]
