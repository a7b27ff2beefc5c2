"""The original project's eleven commands, each with its flags as the original README wrote them,
on tiny settings (tiny local models, the real data folder). They are thin entry points onto the
zhtune CLI; these tests run them as a user would, in a fresh working folder."""
from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import datasets
import pytest

from test_benchmarks import FakeHub

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
# Tiny settings on top of the documented flags: trailing key=value overrides or small limits.
EVAL_TINY = ["--benchmarks", "ceval,mmlu", "--limit", "1", "--shots", "0", "--no-perplexity"]


def script(name: str, *args: str, cwd: Path, data_dir: Path) -> str:
    env = dict(os.environ, ZHTUNE_DATA_DIR=str(data_dir), PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, str(SCRIPTS / f"{name}.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_download_data(tmp_path, monkeypatch):
    """python scripts/download_data.py --output_dir data --belle_sample_size 50000 (hub faked)."""
    import zhtune.data.download as data_cmd

    monkeypatch.setattr(datasets, "load_dataset", FakeHub(script_repos={"haonan-li/cmmlu"}))
    monkeypatch.setattr(data_cmd, "hub_commit", lambda repo: "sha")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["download_data.py", "--output_dir", "data",
                                      "--belle_sample_size", "50000"])
    monkeypatch.syspath_prepend(str(SCRIPTS))
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(SCRIPTS / "download_data.py"), run_name="__main__")
    assert exit_.value.code in (0, None)
    assert len(list((tmp_path / "data" / "ceval" / "val").glob("*_val.csv"))) == 52
    assert (tmp_path / "data" / "belle" / "train_0.5M_CN.jsonl").exists()
    assert (tmp_path / "data" / "MANIFEST.json").exists()


@pytest.mark.parametrize("family", ["llama", "qwen"])
def test_original_pipeline(family, tiny_llama_dir, tiny_qwen_dir, shared_data, tmp_path):
    """download_model -> preprocess -> evaluate_baseline -> train -> evaluate_model, per family."""
    q = "_qwen" if family == "qwen" else ""
    source = tiny_qwen_dir if family == "qwen" else tiny_llama_dir
    work = tmp_path / "work"
    work.mkdir()
    run = lambda name, *args: script(name, *args, cwd=work, data_dir=shared_data)  # noqa: E731

    # 3. download the base model into models/ (a local folder stands in for the hub id)
    out = run(f"download{q}_model", "--model_name_or_path", str(source), "--output_dir", "models")
    model = work / out.strip().splitlines()[-1]  # the pulled folder (absolute stays absolute)
    assert (model / "config.json").exists() and list(model.glob("*.safetensors"))
    assert model.is_relative_to(work / "models")

    # 2. preprocess: processed_data[_qwen]/train_dataset (+ the benchmark folders the Qwen flow reads)
    processed = f"processed_data{q}"
    run(f"preprocess_data{q}", "--data_dir", str(shared_data), "--output_dir", processed,
        "--model_name_or_path", str(model), "data.sample_size=40", "data.max_length=128")
    manifest = json.loads((work / processed / "train_dataset" / "manifest.json").read_text())
    assert manifest["family"] == ("qwen2" if family == "qwen" else "llama2")
    assert (work / processed / "ceval_dataset" / "val").is_dir()

    # 4. baseline evaluation
    base_args = ["--model_path", str(model), "--results_dir", f"evaluation_results/{family}_baseline"]
    if family == "qwen":
        base_args += ["--ceval_path", f"{processed}/ceval_dataset", "--mmlu_path", f"{processed}/mmlu_dataset"]
    run(f"evaluate{q}_baseline", *base_args, *EVAL_TINY)
    baseline = work / "evaluation_results" / f"{family}_baseline"
    assert list(baseline.rglob("summary.json"))

    # 5. LoRA training with the documented flags (+ a step limit)
    if family == "qwen":
        run("train_qwen_lora", "--model_path", str(model), "--dataset_path", f"{processed}/train_dataset",
            "--output_dir", "results/lora-chinese-qwen", "--num_epochs", "3", "--batch_size", "4",
            "--gradient_accumulation_steps", "8", "--learning_rate", "1e-4", "train.max_steps=2")
        adapter = work / "results" / "lora-chinese-qwen"
    else:
        run("train_lora", "--model_path", str(model), "--dataset_path", f"{processed}/train_dataset",
            "--output_dir", "results/lora-chinese-llama", "--lora_rank", "16", "train.max_steps=2")
        adapter = work / "results" / "lora-chinese-llama"
    config = json.loads((adapter / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == (8 if family == "qwen" else 16)  # Qwen default rank 8 (original README)

    # 6. evaluation of the adapter, with the forgetting analysis against the sibling baseline
    tuned_args = ["--base_model_path", str(model), "--lora_model_path", str(adapter.relative_to(work)),
                  "--results_dir", f"evaluation_results/{family}_lora",
                  "--baseline_dir", f"evaluation_results/{family}_baseline"]
    if family == "qwen":
        tuned_args += ["--ceval_path", f"{processed}/ceval_dataset", "--mmlu_path", f"{processed}/mmlu_dataset"]
    run(f"evaluate{q}_model", *tuned_args, *EVAL_TINY)
    forgetting = work / "evaluation_results" / f"{family}_lora" / "forgetting"
    assert (forgetting / "report.html").exists()
    assert json.loads((forgetting / "report.json").read_text())["headline"]
