"""`zhtune train` under `accelerate launch` with two CPU processes (DDP over gloo).

accelerate 1.x's ``--cpu --num_processes 2`` starts a single process unless MPI is set up
(``--mpirun_hostfile``); two local processes come from ``--multi_gpu``, which uses torchrun and,
on a machine without GPUs, gloo on the CPU.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from zhtune.io import read_json, read_jsonl


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # two training processes, about half a minute
def test_two_processes_train_and_write_once(tiny_qwen_dir, shared_data, tmp_path):
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or "accelerate"
    out = tmp_path / "out"
    cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
           "-m", "zhtune", "train", "--model", str(tiny_qwen_dir), "--data-dir", str(shared_data),
           "--output-dir", str(out), "--max-steps", "6", "--batch-size", "2",
           "data.sample_size=40", "data.max_length=96", "train.save_steps=3", "train.logging_steps=1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]

    meta = read_json(out / "adapter" / "zhtune_adapter.json")
    assert meta["metrics"]["world_size"] == 2 and meta["metrics"]["steps"] == 6
    # The data is split over both processes: an epoch is rows / (2 processes x batch 2) steps.
    manifest = read_json(out / "data" / "manifest.json")
    rows = manifest["counts"]["rows"]["train"]
    assert meta["metrics"]["epochs"] == 6 / -(-rows // 4)
    # Tokens from both processes are counted (a single process would see at most 12 rows).
    longest = 96
    assert meta["train_tokens"] > 12 * longest
    # Written once: one log line per step, one TensorBoard file, one set of checkpoints.
    log = read_jsonl(out / "train_log.jsonl")
    losses = [e for e in log if "loss" in e]
    assert [e["step"] for e in losses] == [1, 2, 3, 4, 5, 6]
    assert all(e["loss"] > 0 for e in losses)
    assert len(list((out / "runs").glob("events.out.tfevents.*"))) == 1
    assert sorted(p.name for p in (out / "checkpoints").glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6"]
    assert not list(out.glob(".*partial"))
    assert done.stdout.count("zhtune train ->") == 1  # the summary table comes from the main process


def _torchrun(nproc: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
            "--master_port", str(_free_port()), "-m", "zhtune"]


def _cpu_env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


@pytest.mark.slow  # two evaluations, one of them in two processes
def test_sharded_evaluation_equals_one_process(tiny_qwen_dir, shared_data, tmp_path):
    """Each process scores its share; rank 0 gathers and writes: the same predictions, question for
    question, as one process (letters, cloze and GSM8K generation), and the same bits per character,
    text for text (each process scores its block of the probe texts)."""
    config = tmp_path / "probes.yaml"
    config.write_text("eval:\n  perplexity_chars: 1500\n  control_probes: false\n")
    args = ["eval", "--model", str(tiny_qwen_dir), "--data-dir", str(shared_data),
            "--benchmarks", "ceval,mmlu,gsm8k", "--limit", "2", "--subjects",
            "computer_network,operating_system,abstract_algebra,anatomy,astronomy",
            "--formulation", "both", "--shots", "1", "--gsm8k-shots", "1", "--max-new-tokens", "6",
            "--config", str(config), "--no-progress"]
    one, two = tmp_path / "one", tmp_path / "two"
    done = subprocess.run([sys.executable, "-m", "zhtune", *args, "--output-dir", str(one)],
                          env=_cpu_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    done = subprocess.run(_torchrun(2) + [*args, "--output-dir", str(two)], env=_cpu_env(),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]

    want = read_jsonl(one / "base" / "predictions.jsonl")
    got = read_jsonl(two / "base" / "predictions.jsonl")
    assert len(want) == 2 * 5 * 2 + 2 and [r["key"] for r in got] == [r["key"] for r in want]
    for a, b in zip(got, want):
        assert a["pred"] == b["pred"] and a["correct"] == b["correct"], a["key"]
        if "generation" in b:
            assert a["generation"] == b["generation"]
        for field in ("probs", "loglikelihoods"):
            for k, v in b.get(field, {}).items():
                assert a[field][k] == pytest.approx(v, abs=1e-5), (a["key"], k)
    s1, s2 = read_json(one / "base" / "summary.json"), read_json(two / "base" / "summary.json")
    assert s1["settings_fingerprint"] == s2["settings_fingerprint"]
    for name, entry in s1["benchmarks"].items():
        assert s2["benchmarks"][name]["n"] == entry["n"]
        assert s2["benchmarks"][name]["accuracy"] == entry["accuracy"]
    assert done.stdout.count("throughput") <= 1  # the results table: printed by rank 0 only
    for probe in ("zh", "en"):
        p1, p2 = s1["perplexity"][probe], s2["perplexity"][probe]
        assert len(p1["texts"]) >= 2 and [c for c, _ in p2["texts"]] == [c for c, _ in p1["texts"]]
        assert [b for _, b in p2["texts"]] == pytest.approx([b for _, b in p1["texts"]], abs=2e-4)
        assert (p2["chars"], p2["tokens"]) == (p1["chars"], p1["tokens"])
        assert p2["bits_per_char"] == pytest.approx(p1["bits_per_char"], rel=1e-5)


@pytest.mark.slow  # one training in one process, one in two
def test_probes_and_early_stop_agree_across_two_processes(tiny_qwen_dir, shared_data, tmp_path):
    """`zhtune train --nproc 2` with probes and min_english_retention: rank 0 probes and decides,
    both processes stop at the same step (no process left waiting in an all-reduce), and the
    adapter equals that of one process training on the same batches, each step's two rows as two
    accumulated micro-batches (2 processes x 1 row = 1 process x 1 row x 2 accumulation steps).

    Not against one process x 2 rows: that run sums the same gradient in another order (one GEMM
    over both rows instead of two added), and AdamW turns those last-bit differences into update
    differences of up to ~1e-2 x lr on coordinates whose gradient is below its eps (1e-8; this
    data, one character repeated, has many). Measured: same losses and gradient norms to 7 digits,
    adapters 2e-4 apart. The DDP run equals the accumulated one bit for bit; batch 2 against
    accumulation 2 is tests/test_train.py::test_batch_two_equals_two_accumulated_rows."""
    import re

    import json

    import torch
    from safetensors.torch import load_file

    data = tmp_path / "one_character.json"  # English gets less likely within a few steps
    data.write_text(json.dumps([{"instruction": f"写{i}", "input": "", "output": "的" * 40}
                                for i in range(40)], ensure_ascii=False), encoding="utf-8")
    args = ["train", "--model", str(tiny_qwen_dir), "--data-dir", str(shared_data), "--max-steps", "30",
            "--learning-rate", "3e-2", f"data.train=[{data}]", "data.val_size=0", "data.max_length=64",
            "lora.dropout=0", "train.probes.every_steps=2", "train.probes.ceval_questions=2",
            "train.probes.mmlu_questions=2", "train.probes.perplexity_chars=400", "eval.shots=0",
            "train.probes.min_english_retention=0.9999", "train.report_to=[]", "train.logging_steps=1",
            "train.save_steps=100", "train.warmup_ratio=0",
            "train.precision=fp32"]  # as the resume test
    one, two = tmp_path / "one", tmp_path / "two"
    done = subprocess.run([sys.executable, "-m", "zhtune", *args, "--batch-size", "1",
                           "train.gradient_accumulation_steps=2", "--output-dir", str(one)],
                          env=_cpu_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    done = subprocess.run([sys.executable, "-m", "zhtune", *args, "--batch-size", "1", "--nproc", "2",
                           "--output-dir", str(two)], env=_cpu_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]

    ref, got = read_json(one / "adapter" / "zhtune_adapter.json"), read_json(two / "adapter" / "zhtune_adapter.json")
    stop = ref["metrics"]["steps"]
    assert stop < 30 and got["metrics"]["steps"] == stop and got["metrics"]["world_size"] == 2
    ended = re.findall(r"process (\d) of 2: training ended at step (\d+)", done.stdout + done.stderr)
    assert sorted(ended) == [("0", str(stop)), ("1", str(stop))]  # both ranks, the same step
    rows, ref_rows = read_jsonl(two / "probes.jsonl"), read_jsonl(one / "probes.jsonl")
    assert [r["step"] for r in rows] == [r["step"] for r in ref_rows] == list(range(0, stop + 1, 2))
    assert "stop_reason" in rows[-1] and "stop_reason" in ref_rows[-1]
    for a, b in zip(rows, ref_rows):
        assert a["probe/en_bpc"] == pytest.approx(b["probe/en_bpc"], rel=1e-5)
    assert done.stdout.count("zhtune train ->") == 1  # the summary: once, from rank 0
    want = load_file(str(one / "adapter" / "adapter_model.safetensors"))
    have = load_file(str(two / "adapter" / "adapter_model.safetensors"))
    assert want.keys() == have.keys() and want
    far = {name: float((have[name] - want[name]).abs().max()) for name in want
           if not torch.allclose(have[name], want[name], atol=1e-6, rtol=1e-5)}  # the resume test's tolerance
    assert not far, f"2-process adapter differs from 1-process beyond 1e-6/1e-5: {far}"
    moved = max(float(w.abs().max()) for name, w in want.items() if "lora_B" in name)
    assert moved > 1e-3  # B starts at zero: the adapter really trained, the comparison is not vacuous
