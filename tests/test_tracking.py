"""Tracking: what a run logs, read back from a real local MLflow store (SQLite, through MlflowClient),
W&B offline run files and TensorBoard event files; a sweep as a parent run with child runs."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fixtures_eval import write_standard_pair, write_train_dir
from zhtune.analysis.forgetting import compare_runs
from zhtune.analysis.report import build_report
from zhtune.config import config_from_dict
from zhtune.experiment import STAGES, baseline_dir, stage_fingerprints
from zhtune.io import atomic_write_json, read_json
from zhtune.sweep.grid import SweepPoint
from zhtune import tracking


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> tuple[Path, dict]:
    """One experiment's stage folders as `zhtune run` leaves them, built once from fixtures (no model)."""
    root = tmp_path_factory.mktemp("template")
    base, tuned = write_standard_pair(root / "fixture")
    shutil.copytree(base, root / "baseline" / "base")
    shutil.copytree(tuned, root / "eval" / "tiny")
    atomic_write_json(root / "eval" / "index.json", {"runs": [{"label": "tiny", "dir": "tiny"}]})
    write_train_dir(root / "train")
    cmp = compare_runs(root / "baseline" / "base", root / "eval" / "tiny", output_dir=root / "compare").to_dict()
    build_report(comparisons=[cmp], output_dir=root / "report", train_dir=root / "train")
    return root, cmp


@pytest.fixture
def fake_run(template):
    def make(out: Path, cache: Path, name: str = "tiny", **tracking_cfg) -> tuple:
        """An experiment folder with config ``name``, each stage's folder, and its comparison."""
        cfg = config_from_dict({"name": name, "output": {"dir": str(out), "baseline_cache": str(cache)},
                                "lora": {"rank": 8}, "tracking": tracking_cfg})
        dirs = {"baseline": baseline_dir(cfg, None), "prepare": out / "data", "train": out / "train",
                "evaluate": out / "eval", "compare": out / "compare", "report": out / "report"}
        for stage, folder in dirs.items():
            source = template[0] / {"evaluate": "eval"}.get(stage, stage)
            if source.exists() and not folder.exists():
                shutil.copytree(source, folder)
        return cfg, dirs, template[1]
    return make


def log_like_run_experiment(cfg, dirs) -> tracking.Tracker:
    """What run_experiment does around its stages (the hook itself is tested end to end below)."""
    tracker = tracking.start_experiment(cfg, stage_fingerprints(cfg, None))
    for stage in STAGES:
        with tracker.stage(stage, dirs[stage]):
            pass
    tracker.finish()
    return tracker


def expected_metrics(dirs, cmp) -> dict[str, float]:
    base = read_json(dirs["baseline"] / "base" / "summary.json")["benchmarks"]
    tuned = read_json(dirs["evaluate"] / "tiny" / "summary.json")["benchmarks"]
    return {"base/ceval/accuracy": base["ceval"]["accuracy"], "base/mmlu/stderr": base["mmlu"]["stderr"],
            "tuned/gsm8k/accuracy": tuned["gsm8k"]["accuracy"], "tuned/cmmlu/n": tuned["cmmlu"]["n"],
            "compare/english_forgetting/change_points": cmp["english_forgetting"]["change_points"],
            "compare/english_forgetting/ci_low": cmp["english_forgetting"]["ci_low"],
            "compare/chinese_gain/ci_high": cmp["chinese_gain"]["ci_high"],
            "compare/benchmark/mmlu/change_points": cmp["benchmarks"]["mmlu"]["change_points"]}


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory):
    pytest.importorskip("mlflow", reason="pip install -e '.[dev]' installs mlflow")
    root = tmp_path_factory.mktemp("mlflow")
    return f"sqlite:///{root}/mlflow.db"


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MLflow puts a SQLite store's artifacts in ./mlruns, W&B in ./wandb
    return tmp_path


def test_what_is_logged_comes_from_the_stage_files(tmp_path, fake_run):
    cfg, dirs, cmp = fake_run(tmp_path / "run", tmp_path / "cache")
    params = tracking.experiment_params({"lora": {"rank": 8, "targets": "all"}, "eval": {"subjects": None,
                                         "benchmarks": ["ceval"]}}, {"train": "a", "report": "b"})
    assert params == {"config.lora.rank": "8", "config.lora.targets": "all", "config.eval.subjects": "null",
                      "config.eval.benchmarks": '["ceval"]', "fingerprint.train": "a", "fingerprint.report": "b",
                      "fingerprint": "b"}
    metrics, verdicts = tracking.comparison_values(cmp)
    assert verdicts["verdict/english_forgetting"] == cmp["english_forgetting"]["verdict"] == "inconclusive"
    assert verdicts["verdict/benchmark/mmlu"] == "forgot"
    assert verdicts["verdict/benchmark/ceval"] == cmp["benchmarks"]["ceval"]["verdict"]
    assert metrics["compare/chinese_gain/p_value"] == cmp["chinese_gain"]["p_value"]
    steps = tracking.training_steps(dirs["train"])
    assert [s for s, _ in steps] == sorted({s for s, _ in steps}) and steps[-1][1]["train/eval_loss"] == 2.0
    assert any("train/probe/zh_bpc" in values for _, values in steps)
    assert tracking.eval_prefix({"adapter": "a", "adapter_scale": 0.5}) == "tuned_scale_0.5"


def test_backend_none_imports_no_tracker():
    code = ("import sys; from zhtune.config import ExperimentConfig; from zhtune import tracking, experiment, sweep;"
            "t = tracking.start_experiment(ExperimentConfig(), {'report': 'x'}); assert not t.enabled;"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('mlflow', 'wandb', 'tensorboard')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src"), "PATH": ""})
    assert out.stdout.strip() == "[]"


def test_mlflow_run_read_back_through_the_client(tmp_path, in_tmp, mlflow_uri, fake_run):
    from mlflow import MlflowClient

    cfg, dirs, cmp = fake_run(tmp_path / "run", tmp_path / "cache", backend="mlflow", uri=mlflow_uri,
                              project="zhtune-test")
    tracker = log_like_run_experiment(cfg, dirs)
    client = MlflowClient(tracking_uri=mlflow_uri)
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "tiny"
    fps = stage_fingerprints(cfg, None)
    assert run.data.params["fingerprint"] == fps["report"] and run.data.params["config.lora.rank"] == "8"
    assert run.data.params["fingerprint.baseline"] == fps["baseline"]
    for key, value in expected_metrics(dirs, cmp).items():
        assert run.data.metrics[key] == pytest.approx(value), key
    assert run.data.tags["verdict/english_forgetting"] == "inconclusive"
    assert run.data.tags["verdict/benchmark/mmlu"] == "forgot"
    assert run.data.tags["verdict/chinese_gain"] == cmp["chinese_gain"]["verdict"]
    loss = client.get_metric_history(tracker.run_id, "train/loss")
    assert [m.step for m in loss] == list(range(10, 110, 10)) and loss[0].value == pytest.approx(2.4)
    artifacts = {Path(a.path).name for a in client.list_artifacts(tracker.run_id, "report")}
    assert {"report.html", "report.md", "report.json", "radar.png"} <= artifacts


def test_mlflow_failed_stage_ends_the_run_failed(tmp_path, in_tmp, mlflow_uri):
    from mlflow import MlflowClient

    cfg = config_from_dict({"name": "broken", "tracking": {"backend": "mlflow", "uri": mlflow_uri}})
    tracker = tracking.start_experiment(cfg, {"report": "x"})
    with pytest.raises(RuntimeError):
        with tracker.stage("train", tmp_path):
            raise RuntimeError("out of memory")
    assert MlflowClient(tracking_uri=mlflow_uri).get_run(tracker.run_id).info.status == "FAILED"


def fake_sweep(root: Path, fake_run, **tracking_cfg):
    cfg = config_from_dict({"name": "grid", "output": {"dir": str(root), "baseline_cache": str(root / "cache")},
                            "sweep": {"grid": {"lora.rank": [4, 8]}}, "tracking": tracking_cfg})
    points, cmps = [], {}
    for rank in (4, 8):
        name = f"rank{rank}"
        pcfg, _, cmps[name] = fake_run(root / "runs" / name, root / "cache", name=name)
        pcfg = pcfg.model_copy(update={"lora": pcfg.lora.model_copy(update={"rank": rank})})
        points.append(SweepPoint(name, {"lora.rank": rank}, pcfg))
    (root / "results.md").write_text("| run |\n", encoding="utf-8")
    summary = {"runs": [{"run": p.name, "status": "done"} for p in points], "pareto": ["rank4"], "best": "rank4",
               "failed": []}
    return cfg, points, summary, cmps


def test_mlflow_sweep_is_a_parent_with_nested_runs(tmp_path, in_tmp, mlflow_uri, fake_run):
    from mlflow import MlflowClient

    cfg, points, summary, cmps = fake_sweep(tmp_path / "sweep", fake_run)
    tracking.log_sweep(cfg.tracking.model_copy(update={"backend": "mlflow", "uri": mlflow_uri, "project": "sweeps"}),
                       cfg, points, None, summary)
    client = MlflowClient(tracking_uri=mlflow_uri)
    exp = client.get_experiment_by_name("sweeps")
    runs = client.search_runs([exp.experiment_id])
    parent = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parent) == 1 and parent[0].info.run_name == "grid" and parent[0].data.tags["sweep/best"] == "rank4"
    assert parent[0].data.params["config.sweep.grid.lora.rank"] == "[4, 8]"
    assert parent[0].data.params["config.tracking.backend"] == "mlflow"
    assert [a.path for a in client.list_artifacts(parent[0].info.run_id, "sweep")] == ["sweep/results.md"]
    children = client.search_runs([exp.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent[0].info.run_id}'")
    assert sorted(c.info.run_name for c in children) == ["rank4", "rank8"]
    for child in children:
        name = child.info.run_name
        assert child.data.params["grid.lora.rank"] == name.removeprefix("rank")
        assert child.data.params["config.lora.rank"] == name.removeprefix("rank")
        assert child.data.metrics["compare/english_forgetting/change_points"] == pytest.approx(
            cmps[name]["english_forgetting"]["change_points"])
        assert child.data.tags["verdict/benchmark/mmlu"] == "forgot" and child.info.status == "FINISHED"


def wandb_offline_run(path: Path) -> dict:
    """An offline run's records (run-*.wandb: W&B's LevelDB-style log of protobuf Records, 32 KiB
    blocks of chunks with a 7-byte header) as {run, config, summary, history, artifacts, exit_code}."""
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    out = {"config": {}, "summary": {}, "history": [], "artifacts": [], "exit_code": None}
    pos, block, chunk, records = 7, 32768, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if left < 7 or (length == 0 and kind == 0):  # block trailer / padding
            pos += left
            continue
        chunk += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            records.append(pb.Record.FromString(chunk))
            chunk = b""
    for record in records:
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out["run"] = record.run
        elif kind == "config":
            out["config"].update({i.key: json.loads(i.value_json) for i in record.config.update})
        elif kind == "summary":
            out["summary"].update({i.key: json.loads(i.value_json) for i in record.summary.update if i.key})
        elif kind == "history":
            out["history"].append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item})
        elif kind == "artifact":
            out["artifacts"].append((record.artifact.type, [m.path for m in record.artifact.manifest.contents]))
        elif kind == "exit":
            out["exit_code"] = record.exit.exit_code
    return out


def test_wandb_offline_run_files(tmp_path, in_tmp, monkeypatch, fake_run):
    pytest.importorskip("wandb", reason="pip install -e '.[dev]' installs wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg, points, summary, cmps = fake_sweep(tmp_path / "sweep", fake_run)
    tracking.log_sweep(cfg.tracking.model_copy(update={"backend": "wandb"}), cfg, points, None, summary)
    runs = [wandb_offline_run(f) for f in sorted((tmp_path / "sweep" / "wandb").glob("offline-run-*/run-*.wandb"))]
    by_name = {r["run"].display_name: r for r in runs}
    assert sorted(by_name) == ["grid", "rank4", "rank8"]  # the parent and one run per point
    groups = {r["run"].run_group for r in runs}
    assert len(groups) == 1 and groups.pop().startswith("grid-")
    assert by_name["grid"]["run"].job_type == "sweep" and by_name["rank8"]["run"].job_type == "sweep-point"
    assert all(r["exit_code"] == 0 for r in runs)
    point = by_name["rank8"]
    assert point["config"]["config.lora.rank"] == "8" and point["config"]["grid.lora.rank"] == "8"
    assert point["summary"]["verdict/benchmark/mmlu"] == "forgot"
    assert point["summary"]["compare/english_forgetting/ci_high"] == pytest.approx(
        cmps["rank8"]["english_forgetting"]["ci_high"])
    assert point["summary"]["base/ceval/accuracy"] > 0
    losses = [(h["_step"], h["train/loss"]) for h in point["history"] if "train/loss" in h]
    assert losses[0] == (10, pytest.approx(2.4)) and len(losses) == 10
    report = [files for kind, files in point["artifacts"] if kind == "report"]
    assert report and {"report.html", "report.md", "radar.png"} <= set(report[0])
    assert by_name["grid"]["summary"]["sweep/best"] == "rank4"


def test_tensorboard_event_files(tmp_path, fake_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg, dirs, cmp = fake_run(tmp_path / "run", tmp_path / "cache", backend="tensorboard")
    log_like_run_experiment(cfg, dirs)
    acc = EventAccumulator(str(tmp_path / "run" / "tensorboard"), size_guidance={"tensors": 0, "scalars": 0})
    acc.Reload()
    for key, value in expected_metrics(dirs, cmp).items():
        assert acc.Scalars(key)[-1].value == pytest.approx(value, rel=1e-6), key
    assert [e.step for e in acc.Scalars("train/loss")] == list(range(10, 110, 10))
    verdict = acc.Tensors("verdict/benchmark/mmlu/text_summary")[0].tensor_proto.string_val[0]
    assert verdict == b"forgot"


@pytest.mark.slow
def test_run_logs_the_whole_experiment_to_mlflow(tiny_llama_dir, shared_data, tmp_path, in_tmp, mlflow_uri):
    """`zhtune run --report-to mlflow` end to end (tiny model): the hook in run_experiment; a second run
    whose stages are all up to date logs the same values, read from the stage files."""
    from mlflow import MlflowClient
    from typer.testing import CliRunner

    from experiment_helpers import tiny_config
    from zhtune.cli import app

    raw = tiny_config(tiny_llama_dir, tmp_path / "run", tmp_path / "cache")
    raw["tracking"] = {"uri": mlflow_uri, "project": "e2e"}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
    for _ in range(2):
        res = CliRunner().invoke(app, ["run", str(tmp_path / "tiny.yaml"), "--data-dir", str(shared_data),
                                       "--report-to", "mlflow"])
        assert res.exit_code == 0, res.output
    client = MlflowClient(tracking_uri=mlflow_uri)
    runs = client.search_runs([client.get_experiment_by_name("e2e").experiment_id])
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    cfg = config_from_dict(raw)
    fps = stage_fingerprints(cfg, Path(shared_data).resolve())
    out = tmp_path / "run"
    cmp = read_json(out / "compare" / "comparison.json")
    base = read_json(baseline_dir(cfg, Path(shared_data).resolve()) / "base" / "summary.json")["benchmarks"]
    tuned = read_json(out / "eval" / "tiny" / "summary.json")["benchmarks"]
    for run in runs:
        data = run.data
        assert data.params["fingerprint"] == fps["report"] and data.params["config.tracking.backend"] == "mlflow"
        assert data.metrics["base/ceval/accuracy"] == pytest.approx(base["ceval"]["accuracy"])
        assert data.metrics["tuned/mmlu/stderr"] == pytest.approx(tuned["mmlu"]["stderr"])
        # a tiny random model is at chance in English: the headline leaves it out, the pooled figure has it
        name = "english_forgetting" if cmp["english_forgetting"] else "pooled_including_floors/english_forgetting"
        fig = cmp["english_forgetting"] or cmp["pooled_including_floors"]["english_forgetting"]
        assert data.metrics[f"compare/{name}/ci_high"] == pytest.approx(fig["ci_high"])
        assert data.tags[f"verdict/{name}"] == fig["verdict"]
        assert "report/report.html" in {a.path for a in client.list_artifacts(run.info.run_id, "report")}
        assert len(client.get_metric_history(run.info.run_id, "train/loss")) == 6
