"""`zhtune run`: stages, fingerprints, skipping, redoing, and resuming after SIGKILL."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from zhtune.config import config_from_dict
from zhtune.experiment import run_experiment
from experiment_helpers import tiny_config


def test_run_skips_finished_stages_and_redoes_changed_ones(tiny_llama_dir, shared_data, tmp_path):
    raw = tiny_config(tiny_llama_dir, tmp_path / "run", tmp_path / "baselines")
    first = run_experiment(config_from_dict(raw), data_dir=shared_data)
    assert first.ran == ["baseline", "prepare", "train", "evaluate", "compare", "report"]
    assert (first.report_dir / "report.html").exists()
    assert (tmp_path / "run" / "config.resolved.yaml").exists()
    # The adapter's evaluation is labelled with the experiment's name.
    assert json.loads((first.eval_dir / "index.json").read_text())["labels"] == [raw["name"]]

    again = run_experiment(config_from_dict(raw), data_dir=shared_data)
    assert again.ran == [] and len(again.skipped) == 6

    # A LoRA setting changes training and everything after it, not the baseline or the data.
    raw["lora"]["rank"] = 8
    changed = run_experiment(config_from_dict(raw), data_dir=shared_data)
    assert changed.ran == ["train", "evaluate", "compare", "report"]
    assert changed.skipped == ["baseline", "prepare"]
    meta = json.loads((changed.train_dir / "adapter" / "adapter_config.json").read_text())
    assert meta["r"] == 8


def test_baseline_is_shared_between_runs(tiny_llama_dir, shared_data, tmp_path):
    cache = tmp_path / "baselines"
    a = run_experiment(config_from_dict(tiny_config(tiny_llama_dir, tmp_path / "a", cache)),
                       data_dir=shared_data)
    b = run_experiment(config_from_dict(tiny_config(tiny_llama_dir, tmp_path / "b", cache,
                                                    lora__dropout=0.1)), data_dir=shared_data)
    assert a.baseline_dir == b.baseline_dir
    assert "baseline" in a.ran and "baseline" in b.skipped


def _launch(cfg_path: Path, data_dir: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "zhtune", "-q", "run", str(cfg_path),
                             "--data-dir", str(data_dir)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _kill_when(proc: subprocess.Popen, condition, timeout: float = 300) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            return False
        if condition():
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.02)
    proc.kill()
    raise AssertionError("condition never met")


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_result(tiny_llama_dir, shared_data, tmp_path):
    cache = tmp_path / "baselines"
    reference = run_experiment(config_from_dict(tiny_config(
        tiny_llama_dir, tmp_path / "ref", cache, train__max_steps=12)), data_dir=shared_data)

    raw = tiny_config(tiny_llama_dir, tmp_path / "run", cache, train__max_steps=12)
    cfg_path = tmp_path / "run.yaml"
    cfg_path.write_text(yaml.safe_dump(raw))
    run_dir = tmp_path / "run"

    # 1) killed during training, once a checkpoint exists
    killed = _kill_when(_launch(cfg_path, shared_data),
                        lambda: any((run_dir / "train" / "checkpoints").glob("checkpoint-*/trainer_state.json")))
    assert killed, "the run finished before it could be killed during training"
    assert not (run_dir / "train" / "adapter").exists()
    # 2) killed during the evaluation of the adapter
    killed = _kill_when(_launch(cfg_path, shared_data),
                        lambda: (run_dir / "eval" / "stage-started.json").exists())
    assert killed, "the run finished before it could be killed during evaluation"
    # 3) finishes
    proc = _launch(cfg_path, shared_data)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out.decode()[-3000:]
    assert (run_dir / "report" / "report.html").exists()

    a = load_file(run_dir / "train" / "adapter" / "adapter_model.safetensors")
    b = load_file(reference.train_dir / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert (a[k] - b[k]).abs().max().item() < 1e-4, k
    label = next(p for p in (run_dir / "eval").iterdir() if (p / "predictions.jsonl").exists()).name
    preds = (run_dir / "eval" / label / "predictions.jsonl").read_text().splitlines()
    ref_preds = (reference.eval_dir / label / "predictions.jsonl").read_text().splitlines()
    assert [json.loads(p)["pred"] for p in preds] == [json.loads(p)["pred"] for p in ref_preds]


def test_max_per_benchmark_spreads_over_subjects(shared_data):
    from zhtune.config import EvalConfig
    from zhtune.eval.suite import load_questions

    qs = load_questions(EvalConfig(benchmarks=["ceval", "mmlu", "gsm8k"], max_per_benchmark=60),
                        shared_data)
    assert [len(qs[b]) for b in ("ceval", "mmlu", "gsm8k")] == [60, 60, 60]
    # 52 C-Eval subjects: every subject once, then the first 8 subjects a second time
    assert len({q.subject for q in qs["ceval"]}) == 52
    assert len({q.category for q in qs["mmlu"]}) == 4
    again = load_questions(EvalConfig(benchmarks=["ceval"], max_per_benchmark=60), shared_data)
    assert [q.key for q in again["ceval"]] == [q.key for q in qs["ceval"]]
