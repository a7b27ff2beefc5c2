"""The fault matrix: each stage of `zhtune run` x each fault, on a tiny model.

Faults strike at a write of the stage (tests/fault_runner.py): SIGKILL and SIGTERM as real signals
in a `zhtune run` subprocess, ENOSPC as a failing write in this process through the CLI's entry
point, and corrupt input from the previous stage. For the first three, one chain of runs per fault
kind strikes stage after stage (each rerun resumes the stage the previous run was stopped in, then
is stopped in the next one), and a last plain rerun must end with the same comparison.json as the
fault-free reference run. Corrupt input must end in one line naming the file, exit status 2, and
no finished marker. docs/resume.md shows the matrix and what each cell does.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from fault_runner import fault_env
import yaml

from experiment_helpers import tiny_config
from fault_runner import install
from zhtune.artifacts import STAGE_FINISHED

RUNNER = Path(__file__).with_name("fault_runner.py")
STAGES = ("baseline", "prepare", "train", "evaluate", "compare", "report")
# Where each stage is struck: a glob over its atomic writes, or the training checkpoint.
FAULT_AT = {
    "baseline": "*/cache/*/base/chunks/mmlu__*",   # between two committed evaluation chunks
    "prepare": "*/run/data/manifest.json",           # the prepared data's last file
    "train": "checkpoint#2",                          # the second checkpoint (step 4 of 6)
    "evaluate": "*/run/eval/tiny/chunks/mmlu__*",
    "compare": "*/run/compare/comparison.json",
    "report": "*/run/report/report.json",
}
SUBJECTS = ["computer_network", "abstract_algebra", "anatomy"]  # one C-Eval, two MMLU chunks


def _config(model_dir: Path, root: Path) -> Path:
    raw = tiny_config(model_dir, root / "run", root / "cache", eval__subjects=SUBJECTS,
                      eval__perplexity_chars=400)
    path = root / "config.yaml"
    root.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def _stage_dir(root: Path, stage: str) -> Path:
    if stage == "baseline":
        return next((root / "cache").iterdir())
    return root / "run" / {"prepare": "data", "evaluate": "eval"}.get(stage, stage)


def _comparison(root: Path) -> dict:
    """comparison.json with this run's folders written as placeholders."""
    text = (root / "run" / "compare" / "comparison.json").read_text(encoding="utf-8")
    return json.loads(text.replace(str(root / "run"), "<RUN>").replace(str(root / "cache"), "<CACHE>"))


def _run(config: Path, fault: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(RUNNER), "run", str(config)], env=fault_env(fault),
                          capture_output=True, text=True, timeout=600)


def _main_in_process(argv: list[str], capsys) -> tuple[int, str]:
    """The CLI's entry point in this process (its signal handlers undone after)."""
    from zhtune.cli import main

    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    old_argv = sys.argv
    sys.argv = ["zhtune", *argv]
    try:
        main()
        code = 0
    except SystemExit as exit_:
        code = exit_.code or 0
    finally:
        sys.argv = old_argv
        for s, h in handlers.items():
            signal.signal(s, h)
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def reference(tiny_qwen_dir, tmp_path_factory) -> dict:
    """The fault-free run every chain must end equal to."""
    root = tmp_path_factory.mktemp("reference")
    done = _run(_config(tiny_qwen_dir, root))
    assert done.returncode == 0, done.stderr[-3000:]
    return {"root": root, "comparison": _comparison(root)}


def _one_line_error(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-3000:]
    return lines[0]


@pytest.mark.slow  # seven `zhtune run` processes per fault kind
@pytest.mark.parametrize("kind", ["sigkill", "sigterm"])
def test_signal_at_each_stage_then_rerun(kind, reference, tiny_qwen_dir, tmp_path):
    config = _config(tiny_qwen_dir, tmp_path)
    for stage in STAGES:
        struck = _run(config, f"{kind}@{FAULT_AT[stage]}")
        if kind == "sigkill":
            assert struck.returncode == -signal.SIGKILL, (stage, struck.stderr[-3000:])
        else:  # stopped cleanly: one line, 128 + SIGTERM
            assert struck.returncode == 128 + signal.SIGTERM, (stage, struck.stderr[-3000:])
            assert "stopped by SIGTERM" in struck.stderr and "Traceback" not in struck.stderr
        assert not (_stage_dir(tmp_path, stage) / STAGE_FINISHED).exists(), stage
        for before in STAGES[:STAGES.index(stage)]:
            assert (_stage_dir(tmp_path, before) / STAGE_FINISHED).exists(), (stage, before)
        if stage == "train":
            ckpts = sorted(p.name for p in (tmp_path / "run/train/checkpoints").glob("checkpoint-*"))
            # SIGKILL: killed after writing checkpoint-4; SIGTERM: the next step saved and stopped.
            assert ckpts[-1] == ("checkpoint-4" if kind == "sigkill" else "checkpoint-5"), ckpts
            assert not (tmp_path / "run/train/adapter").exists()
    done = _run(config)
    assert done.returncode == 0, done.stderr[-3000:]
    assert _comparison(tmp_path) == reference["comparison"]
    ran = json.loads((tmp_path / "run/experiment.json").read_text())["ran"]
    assert ran == ["report"]  # the last rerun had only the report left


@pytest.mark.slow
def test_disk_full_at_each_stage_then_rerun(reference, tiny_qwen_dir, tmp_path, capsys, monkeypatch,
                                            one_torch_thread):
    config = _config(tiny_qwen_dir, tmp_path)
    for stage in STAGES:
        with monkeypatch.context() as patch:
            install(f"enospc@{FAULT_AT[stage]}", patch.setattr)
            code, stderr = _main_in_process(["run", str(config)], capsys)
        assert code == 2, (stage, stderr[-3000:])
        line = _one_line_error(stderr)
        assert "no space left on device" in line and str(tmp_path) in line, line
        assert not (_stage_dir(tmp_path, stage) / STAGE_FINISHED).exists(), stage
        assert not list(_stage_dir(tmp_path, stage).rglob(".*.tmp")), stage  # no half-written file
    code, stderr = _main_in_process(["run", str(config)], capsys)
    assert code == 0, stderr[-3000:]
    assert _comparison(tmp_path) == reference["comparison"]


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _corrupt_model(root: Path) -> list[str]:
    model = root / "model"
    _truncate(next(model.glob("*.safetensors")))
    return [f"model.name_or_path={model}"]


def _corrupt_data(root: Path) -> list[str]:
    from conftest import data_dir

    data = root / "data"
    data.mkdir()
    for entry in data_dir().iterdir():  # links to the real data, BELLE's file a damaged copy
        if entry.name != "belle":
            (data / entry.name).symlink_to(entry)
    (data / "belle").mkdir()
    for entry in (data_dir() / "belle").iterdir():
        if entry.name != "dev1K.json":
            (data / "belle" / entry.name).symlink_to(entry)
    (data / "belle/dev1K.json").write_bytes((data_dir() / "belle/dev1K.json").read_bytes()[:3000] + b"\xff\xfe\x00")
    return [f"data.data_dir={data}"]


CORRUPT = {  # stage -> (damage its input, what the one line names)
    "baseline": (_corrupt_model, "model.safetensors"),
    "prepare": (_corrupt_data, "dev1K.json"),
    "train": (lambda r: _truncate(r / "run/data/manifest.json") or [], "data"),
    "evaluate": (lambda r: _truncate(r / "run/train/adapter/adapter_model.safetensors") or [],
                 "adapter_model.safetensors"),
    "compare": (lambda r: _truncate(r / "run/eval/tiny/predictions.jsonl", 0.7) or [], "predictions.jsonl"),
    # the report reads the compare stage's comparison.json (and nothing of the evaluations)
    "report": (lambda r: _truncate(r / "run/compare/comparison.json") or [], "comparison.json"),
}


@pytest.mark.parametrize("stage", STAGES)
def test_corrupt_input_is_one_line(stage, reference, tiny_qwen_dir, tmp_path, capsys, one_torch_thread):
    """A copy of the finished reference run, the stage's input damaged, the stage forced: one line
    naming the file, exit 2, and the stage not marked finished."""
    root = tmp_path / "copy"
    shutil.copytree(reference["root"], root, symlinks=True)
    shutil.copytree(tiny_qwen_dir, root / "model")
    config = root / "config.yaml"
    raw = yaml.safe_load(config.read_text())
    raw["output"] = {"dir": str(root / "run"), "baseline_cache": str(root / "cache")}
    config.write_text(yaml.safe_dump(raw))
    damage, names = CORRUPT[stage]
    overrides = damage(root)
    code, stderr = _main_in_process(["run", str(config), *overrides, "--force", stage], capsys)
    assert code == 2, stderr[-3000:]
    line = _one_line_error(stderr)
    assert names in line, line
    stage_dir = _stage_dir(root, stage) if stage != "baseline" else None
    if stage_dir is not None:
        assert not (stage_dir / STAGE_FINISHED).exists()
