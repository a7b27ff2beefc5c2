"""`zhtune eval` on the tiny model with local data, including the original project's flags."""
from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

from zhtune.cli import app
from zhtune.errors import UserError
from zhtune.io import read_json, read_jsonl

runner = CliRunner()


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    if result.exception and not isinstance(result.exception, (SystemExit, UserError)):
        raise result.exception
    return result


def test_eval_writes_outputs(tiny_qwen_dir, shared_data, tmp_path):
    out = tmp_path / "out"
    r = invoke("eval", "--model", tiny_qwen_dir, "--data-dir", shared_data, "--output-dir", out,
               "--benchmarks", "ceval,mmlu", "--subjects", "logic,astronomy", "--limit", 2,
               "--shots", 2, "--batch-size", 3, "--no-perplexity", "--no-progress")
    assert r.exit_code == 0, r.output
    summary = read_json(out / "base" / "summary.json")
    assert summary["model"] == str(tiny_qwen_dir)
    assert summary["settings"]["shots"] == 2 and summary["settings"]["limit"] == 2
    assert {b: e["n"] for b, e in summary["benchmarks"].items()} == {"ceval": 2, "mmlu": 2}
    assert summary["perplexity"] is None
    rows = read_jsonl(out / "base" / "predictions.jsonl")
    assert [r["key"] for r in rows] == ["ceval/logic/val/0", "ceval/logic/val/1",
                                        "mmlu/astronomy/test/0", "mmlu/astronomy/test/1"]
    resolved = yaml.safe_load((out / "config.resolved.yaml").read_text())
    assert resolved["model"]["name_or_path"] == str(tiny_qwen_dir)
    assert resolved["eval"]["shots"] == 2 and resolved["eval"]["perplexity"] is False
    assert read_json(out / "index.json")["labels"] == ["base"]
    assert "ceval" in r.output and "mmlu" in r.output  # the results table


@pytest.mark.parametrize("which", ["benchmark folder", "data folder"])
def test_original_flags(tiny_llama_dir, shared_data, tmp_path, monkeypatch, which):
    monkeypatch.delenv("ZHTUNE_DATA_DIR", raising=False)
    ceval = shared_data / "ceval" if which == "benchmark folder" else shared_data
    out = tmp_path / "results"
    # As the original script was called: no data folder, no benchmark list, no perplexity flag.
    r = invoke("eval", "--model_path", tiny_llama_dir, "--results_dir", out, "--ceval_path", ceval,
               "--subjects", "logic", "--limit", 1, "--shots", 1, "--no-progress")
    assert r.exit_code == 0, r.output
    summary = read_json(out / "base" / "summary.json")
    assert summary["settings"]["benchmarks"] == ["ceval"] and summary["perplexity"] is None
    assert summary["benchmarks"]["ceval"]["n"] == 1
    assert (out / "data-links" / "ceval").resolve() == (shared_data / "ceval").resolve()


def test_adapter_flags_and_config(tiny_llama_dir, shared_data, tmp_path):
    from test_suite import make_adapter

    train_out = make_adapter(tiny_llama_dir, tmp_path / "belle-run", seed=3)
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"name_or_path": str(tiny_llama_dir)},
        "eval": {"benchmarks": ["mmlu"], "subjects": ["astronomy"], "limit": 2, "shots": 5,
                 "perplexity": False}}))
    out = tmp_path / "out"
    r = invoke("eval", "--config", config, "--shots", 0, "--lora_model_path", train_out,
               "--adapter-scale", "0,0.5,1", "--data-dir", shared_data, "--output-dir", out,
               "--no-progress")
    assert r.exit_code == 0, r.output
    index = read_json(out / "index.json")
    assert index["labels"] == ["base", "belle-run@scale-0", "belle-run@scale-0.5", "belle-run"]
    half = read_json(out / "belle-run@scale-0.5" / "summary.json")
    assert half["adapter_scale"] == 0.5 and half["settings"]["shots"] == 0  # flag over config
    assert half["benchmarks"]["mmlu"]["n"] == 2


def test_bad_input_is_a_clear_error(tiny_llama_dir, shared_data, tmp_path):
    r = invoke("eval", "--model", tiny_llama_dir, "--adapter", tmp_path / "nope", "--data-dir",
               shared_data, "--output-dir", tmp_path / "o", "--benchmarks", "ceval", "--limit", 1,
               "--no-perplexity")
    assert isinstance(r.exception, UserError) and "no such adapter folder" in str(r.exception)
    r = invoke("eval", "--model", tiny_llama_dir, "--adapter-scale", "0,half", "--output-dir", tmp_path / "o")
    assert isinstance(r.exception, UserError) and "--adapter-scale" in str(r.exception)
    r = invoke("eval", "--model", tiny_llama_dir, "--benchmarks", "ceval,xyz", "--output-dir", tmp_path / "o")
    assert isinstance(r.exception, UserError) and "xyz" in str(r.exception)
    # bf16 on the CPU does not reproduce fp32's predictions closely enough (benchmarks/eval_dtype.py)
    r = invoke("eval", "--model", tiny_llama_dir, "--dtype", "bfloat16", "--device", "cpu",
               "--data-dir", shared_data, "--output-dir", tmp_path / "o", "--benchmarks", "ceval")
    assert isinstance(r.exception, UserError) and "runs in float32" in str(r.exception)
