"""A benchmark is one YAML file end to end: a new generation benchmark and a new multiple-choice one,
from the user's own spec folder (ZHTUNE_BENCHMARK_PATH), go through eval -> compare -> report with no
code change, under their own names and titles."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from zhtune.data.specs import SPEC_PATH_ENV, _spec_files


def _new_spec(shipped: str, name: str, title: str) -> str:
    text = _spec_files().joinpath(f"{shipped}.yaml").read_text(encoding="utf-8")
    lines = text.splitlines()
    lines = [f"name: {name}" if line.startswith("name: ") else
             f"title: {title}" if line.startswith("title: ") else line for line in lines]
    return "\n".join(lines) + "\n"


def _zhtune(*args, env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "zhtune.cli", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_new_benchmarks_from_a_spec_folder_run_end_to_end(tiny_qwen_dir, shared_data, tmp_path):
    from test_suite import make_adapter

    specs = tmp_path / "specs"
    specs.mkdir()
    # A second maths set in GSM8K's format and a Chinese multiple-choice set in C-Eval's layout,
    # under names and titles no code knows.
    (specs / "mathx.yaml").write_text(_new_spec("gsm8k", "mathx", "MathX Word Problems"), encoding="utf-8")
    (specs / "kaoshi.yaml").write_text(_new_spec("ceval", "kaoshi", "Kaoshi Exam"), encoding="utf-8")
    data = tmp_path / "data"
    data.mkdir()
    (data / "mathx").symlink_to(shared_data / "gsm8k", target_is_directory=True)
    (data / "kaoshi").symlink_to(shared_data / "ceval", target_is_directory=True)
    env = {**os.environ, SPEC_PATH_ENV: str(specs), "PYTHONPATH": os.pathsep.join(sys.path)}

    adapter = make_adapter(tiny_qwen_dir, tmp_path / "adapter", seed=3)
    out = tmp_path / "eval"
    r = _zhtune("eval", "--model", tiny_qwen_dir, "--adapter", adapter, "--data-dir", data,
                "--output-dir", out, "--benchmarks", "kaoshi,mathx", "--subjects", "logic",
                "--limit", 6, "--shots", 1, "--generation-shots", 1, "--max-new-tokens", 6,
                "--no-perplexity", "--no-progress", env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    index = json.loads((out / "index.json").read_text())
    base, tuned = (out / run["dir"] for run in index["runs"])
    summary = json.loads((base / "summary.json").read_text())
    assert {b: e["n"] for b, e in summary["benchmarks"].items()} == {"kaoshi": 6, "mathx": 6}
    assert "accuracy_strict" in summary["benchmarks"]["mathx"]  # scored as a generation benchmark
    rows = [json.loads(line) for line in (base / "predictions.jsonl").read_text().splitlines()]
    assert {r["key"].split("/")[0] for r in rows} == {"kaoshi", "mathx"}
    assert all("generation" in r for r in rows if r["key"].startswith("mathx/"))

    r = _zhtune("compare", base, tuned, "--output-dir", tmp_path / "compare", env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    comparison = json.loads((tmp_path / "compare" / "comparison.json").read_text())
    assert {"kaoshi", "mathx"} <= set(json.dumps(comparison).replace('"', " ").split())

    r = _zhtune("report", "--base", base, "--tuned", tuned, "--output-dir", tmp_path / "report", env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    report = (tmp_path / "report" / "report.md").read_text(encoding="utf-8")
    assert "Kaoshi Exam" in report and "MathX Word Problems" in report
    assert "C-Eval" not in report and "GSM8K" not in report  # titles come from the specs, not the code
    assert list((tmp_path / "report").glob("*.png"))
