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
