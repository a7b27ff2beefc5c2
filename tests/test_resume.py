"""Resume after SIGKILL: the rerun continues from the last complete checkpoint and ends with the
same adapter as an uninterrupted run."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from zhtune.io import read_json, read_jsonl
from zhtune.train.checkpoints import checkpoint_is_complete, latest_checkpoint

STEPS = 60


def _command(model_dir, dataset, out):
    return [sys.executable, "-m", "zhtune", "train", "--model", str(model_dir), "--dataset", str(dataset),
            "--output-dir", str(out), "--max-steps", str(STEPS), "--batch-size", "2",
            "--learning-rate", "5e-3", "train.save_steps=5", "train.save_total_limit=3",
            "train.logging_steps=1", "train.report_to=[]", "data.val_size=0.1"]


def _env():
    # One thread: deterministic sums and no stalls on a shared machine.
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _adapter(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "adapter" / "adapter_model.safetensors"))


@pytest.fixture(scope="module")
def prepared(tiny_qwen_dir, shared_data, tmp_path_factory):
    from zhtune.config import load_config
    from zhtune.data.sft import prepare_dataset

    cfg = load_config(None, [f"model.name_or_path={tiny_qwen_dir}", "data.sample_size=80",
                             "data.max_length=96", "data.val_size=0.1"])
    out = tmp_path_factory.mktemp("resume-data")
    prepare_dataset(cfg, out, data_dir=shared_data, show_progress=False)
    return out


def test_checkpoint_completeness(tmp_path):
    ckpts = tmp_path / "checkpoints"
    good, torn, empty = ckpts / "checkpoint-10", ckpts / "checkpoint-15", ckpts / "checkpoint-20"
    for d in (good, torn, empty):
        d.mkdir(parents=True)
    from safetensors.torch import save_file

    for d in (good, torn):
        save_file({"w": torch.zeros(4)}, str(d / "adapter_model.safetensors"))
        (d / "optimizer.pt").write_bytes(b"x")
    cut = ckpts / "checkpoint-12"  # trainer_state.json whole, the weights cut short (a full disk)
    cut.mkdir()
    (cut / "adapter_model.safetensors").write_bytes((good / "adapter_model.safetensors").read_bytes()[:-4])
    (cut / "optimizer.pt").write_bytes(b"x")
    (cut / "trainer_state.json").write_text('{"global_step": 12}')
    assert not checkpoint_is_complete(cut)
    (good / "trainer_state.json").write_text('{"global_step": 10}')
    (torn / "trainer_state.json").write_text('{"global_st')  # killed mid-write
    assert checkpoint_is_complete(good) and not checkpoint_is_complete(torn)
    assert not checkpoint_is_complete(empty)
    assert latest_checkpoint(ckpts) == good and torn.exists()
    assert latest_checkpoint(ckpts, remove_incomplete=True) == good
    assert not torn.exists() and not empty.exists() and not cut.exists() and good.exists()
    assert latest_checkpoint(tmp_path / "missing") is None


@pytest.mark.slow  # three training processes, about a minute
def test_sigkill_then_rerun_equals_uninterrupted(tiny_qwen_dir, prepared, tmp_path):
    ref, out = tmp_path / "reference", tmp_path / "killed"
    done = subprocess.run(_command(tiny_qwen_dir, prepared, ref), env=_env(), capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    proc = subprocess.Popen(_command(tiny_qwen_dir, prepared, out), env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    try:
        while time.time() < deadline and proc.poll() is None:
            if latest_checkpoint(out / "checkpoints") is not None:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "training ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "adapter").exists()  # never a half-written adapter that looks complete
    last = latest_checkpoint(out / "checkpoints")
    assert last is not None and int(last.name.split("-")[1]) < STEPS
    # A checkpoint being written at the moment of the kill: no valid trainer_state.json.
    torn = out / "checkpoints" / f"checkpoint-{STEPS - 1}"
    torn.mkdir(exist_ok=True)
    (torn / "adapter_model.safetensors").write_bytes(b"\0" * 64)
    (torn / "trainer_state.json").write_text('{"global_step": ')

    again = subprocess.run(_command(tiny_qwen_dir, prepared, out), env=_env(), capture_output=True,
                           text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert not torn.exists()
    meta = read_json(out / "adapter" / "zhtune_adapter.json")
    resumed = meta["metrics"]["resumed_from"]
    assert resumed is not None and resumed >= int(last.name.split("-")[1])
    assert meta["metrics"]["steps"] == STEPS

    want, got = _adapter(ref), _adapter(out)
    assert want.keys() == got.keys() and want
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=1e-6, rtol=1e-5, msg=name)
    # Same trained-token count and the same loss curve; the log has each step once.
    ref_meta = read_json(ref / "adapter" / "zhtune_adapter.json")
    assert meta["train_tokens"] == ref_meta["train_tokens"]
    losses = [e for e in read_jsonl(out / "train_log.jsonl") if "loss" in e]
    ref_losses = [e for e in read_jsonl(ref / "train_log.jsonl") if "loss" in e]
    assert [e["step"] for e in losses] == list(range(1, STEPS + 1))
    for a, b in zip(losses, ref_losses):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-6)


def test_one_writer_per_output_folder(tiny_qwen_dir, prepared, tmp_path):
    from zhtune.config import load_config
    from zhtune.errors import UserError
    from zhtune.train.checkpoints import lock_output
    from zhtune.train.lora import train_lora

    held = lock_output(tmp_path)  # as if another `zhtune train` were running here
    cfg = load_config(None, [f"model.name_or_path={tiny_qwen_dir}", "train.max_steps=1"])
    with pytest.raises(UserError, match="another `zhtune train` process"):
        train_lora(cfg, tmp_path, dataset_dir=prepared)
    held.close()  # released (as when that process exits or is killed)
    assert lock_output(tmp_path) is not None


@pytest.mark.parametrize("code", ["ENOSYS", "EOPNOTSUPP"])
def test_lock_degrades_to_a_warning_without_flock(tmp_path, monkeypatch, caplog, code):
    """Lustre / BeeGFS without flock support: flock raises ENOSYS or EOPNOTSUPP; training goes on."""
    import errno
    import fcntl

    from zhtune.train import checkpoints

    def unsupported(fd, op):
        raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)))

    monkeypatch.setattr(fcntl, "flock", unsupported)
    with caplog.at_level("WARNING", logger="zhtune.train.checkpoints"):
        held = checkpoints.lock_output(tmp_path)
    assert held is not None and not held.closed
    held.close()
    assert any("does not support locks" in r.getMessage() for r in caplog.records)

    def other_error(fd, op):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(fcntl, "flock", other_error)
    with pytest.raises(OSError, match="I/O error"):  # a real failure is not hidden
        checkpoints.lock_output(tmp_path)
