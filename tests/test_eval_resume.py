"""Evaluation resumes where it stopped (zhtune.eval.resume): killed with SIGKILL at several points
and stopped with a real SIGTERM, the same command finishes with predictions.jsonl and summary.json
equal to an uninterrupted run's; other settings never mix into a partial folder."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fault_runner import fault_env

from zhtune.io import read_json

RUNNER = Path(__file__).with_name("fault_runner.py")
ARGS = ["--benchmarks", "ceval,gsm8k", "--limit", "2", "--shots", "0", "--gsm8k-shots", "0",
        "--max-new-tokens", "8", "--no-perplexity", "--no-progress"]
# Timing and the moment of writing differ from run to run; everything else must be equal.
VOLATILE = {"created", "seconds", "questions_per_second", "throughput"}


def _eval(model, out, fault=None, **popen):
    cmd = [sys.executable, str(RUNNER), "eval", "--model", str(model), "--output-dir", str(out), *ARGS]
    if popen:
        return subprocess.Popen(cmd, env=fault_env(fault), **popen)
    return subprocess.run(cmd, env=fault_env(fault), capture_output=True, text=True, timeout=600)


def stable(obj):
    """``obj`` without the timing fields."""
    if isinstance(obj, dict):
        return {k: stable(v) for k, v in obj.items() if k not in VOLATILE}
    if isinstance(obj, list):
        return [stable(v) for v in obj]
    return obj


def _committed(label_dir: Path) -> list[str]:
    return sorted(p.name for p in (label_dir / "chunks").glob("*.json") if p.name != "stage-started.json")


@pytest.mark.slow  # five evaluation processes on a tiny model, about a minute
def test_killed_and_stopped_evaluation_resumes_to_the_same_result(tiny_qwen_dir, tmp_path):
    ref, out = tmp_path / "reference", tmp_path / "resumed"
    done = _eval(tiny_qwen_dir, ref)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not (ref / "base" / "chunks").exists()  # removed once summary.json is written

    # SIGKILL while committing the 5th chunk, then while committing the 30th of the rerun.
    for fault, before in (("sigkill@*/base/chunks/ceval__*#5", 4), ("sigkill@*/base/chunks/*#26", 4 + 25)):
        killed = _eval(tiny_qwen_dir, out, fault)
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
        assert not (out / "base" / "summary.json").exists()
        assert len(_committed(out / "base")) == before
        assert not list((out / "base" / "chunks").glob(".*.tmp"))  # the write it died in left nothing

    # SIGKILL at the last write: everything is scored, summary.json is not there yet.
    killed = _eval(tiny_qwen_dir, out, "sigkill@*/base/summary.json")
    assert killed.returncode == -signal.SIGKILL
    assert len(_committed(out / "base")) == 52 + 1  # ceval subjects and one GSM8K chunk
    shutil.copytree(out, tmp_path / "partial")

    # A real SIGTERM from outside, as Slurm sends it: not after a rerun that has nothing left to
    # score, so the chunks are cleared first for this part.
    shutil.rmtree(out / "base" / "chunks")
    proc = _eval(tiny_qwen_dir, out, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and len(_committed(out / "base")) < 3:
        time.sleep(0.05)
    assert proc.poll() is None, "the evaluation ended before it could be stopped"
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    assert "stopped by SIGTERM" in stderr and "run the same command again to resume" in stderr
    assert "Traceback" not in stderr
    kept = _committed(out / "base")
    assert 3 <= len(kept) < 53 and not (out / "base" / "summary.json").exists()

    again = _eval(tiny_qwen_dir, out)
    assert again.returncode == 0, again.stderr[-3000:]
    assert not (out / "base" / "chunks").exists()
    for name in ("predictions.jsonl",):
        assert (out / "base" / name).read_text() == (ref / "base" / name).read_text()
    got, want = read_json(out / "base" / "summary.json"), read_json(ref / "base" / "summary.json")
    assert stable(got) == stable(want)
    assert got["throughput"]["questions"] == want["throughput"]["questions"] == 52 * 2 + 2

    # Finished with these settings: the same command again scores nothing and changes nothing.
    rerun = _eval(tiny_qwen_dir, out)
    assert rerun.returncode == 0 and "reused" in rerun.stderr
    assert read_json(out / "base" / "summary.json")["resume_fingerprint"] == got["resume_fingerprint"]

    # Other settings into the partial folder: refused, one line, nothing mixed or removed.
    partial = tmp_path / "partial"
    other = subprocess.run([sys.executable, str(RUNNER), "eval", "--model", str(tiny_qwen_dir),
                            "--output-dir", str(partial), *ARGS[:2], "--limit", "1", *ARGS[4:]],
                           env=fault_env(), capture_output=True, text=True, timeout=600)
    assert other.returncode == 2, other.stderr[-2000:]
    assert "partial evaluation made with other settings" in other.stderr
    assert "Traceback" not in other.stderr
    assert len(_committed(partial / "base")) == 53


def test_chunks_resume_in_process(tiny_qwen_dir, shared_data, tmp_path, monkeypatch, one_torch_thread):
    """GSM8K in several chunks, the perplexity probes, and a damaged chunk file: an evaluation cut
    off after its second commit finishes equal to one run straight through."""
    import zhtune.artifacts as artifacts
    from zhtune.config import load_config
    from zhtune.eval import resume
    from zhtune.eval.suite import run_eval

    monkeypatch.setattr(resume, "GENERATION_CHUNK", 2)
    cfg = load_config(None, [f"model.name_or_path={tiny_qwen_dir}", "eval.benchmarks=[gsm8k,ceval]",
                             "eval.subjects=[computer_network,logic]", "eval.limit=5", "eval.shots=0",
                             "eval.gsm8k_shots=0", "eval.max_new_tokens=6", "eval.perplexity_chars=400"])
    run_eval(cfg.model, cfg.eval, tmp_path / "ref", data_dir=shared_data, progress=False)

    commit, calls = artifacts.commit_chunk, []

    def cut_off(chunks, name, payload):
        calls.append(name)
        if len(calls) == 3:
            raise KeyboardInterrupt  # as if stopped here: two chunks committed
        commit(chunks, name, payload)

    monkeypatch.setattr(resume, "commit_chunk", cut_off)
    with pytest.raises(KeyboardInterrupt):
        run_eval(cfg.model, cfg.eval, tmp_path / "out", data_dir=shared_data, progress=False)
    monkeypatch.setattr(resume, "commit_chunk", commit)
    chunks = tmp_path / "out" / "base" / "chunks"
    assert _committed(tmp_path / "out" / "base") == ["gsm8k__00000-00002.json", "gsm8k__00002-00004.json"]
    (chunks / "gsm8k__00002-00004.json").write_text('{"chunk": "gsm8k/000')  # damaged: scored again

    run_eval(cfg.model, cfg.eval, tmp_path / "out", data_dir=shared_data, progress=False)
    for name in ("predictions.jsonl",):
        assert (tmp_path / "out/base" / name).read_text() == (tmp_path / "ref/base" / name).read_text()
    got, want = (read_json(tmp_path / d / "base" / "summary.json") for d in ("out", "ref"))
    assert stable(got) == stable(want) and got["perplexity"]["zh"]["chars"] > 0
    assert got["benchmarks"]["gsm8k"]["n"] == 5 and got["benchmarks"]["ceval"]["n"] == 10

    # The same folder's finished summary, with its predictions cut short: named, with the fix.
    preds = tmp_path / "out" / "base" / "predictions.jsonl"
    preds.write_text("".join(preds.read_text().splitlines(keepends=True)[:-3]))
    from zhtune.errors import UserError

    with pytest.raises(UserError, match=r"predictions.jsonl: 12 predictions, summary.json counts 15 .*delete"):
        run_eval(cfg.model, cfg.eval, tmp_path / "out", data_dir=shared_data, progress=False)
