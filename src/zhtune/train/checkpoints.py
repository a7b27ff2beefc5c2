"""Training checkpoints: which one to resume from, and who may write a training folder.

Resume: running the same command again continues from the newest *complete* checkpoint. The HF
Trainer writes ``trainer_state.json`` last, so a checkpoint folder without a valid one was being
written when the process died; such folders are removed, as are checkpoints whose safetensors
weights are truncated (zhtune.failures.safetensors_problem). Checkpoints made with other settings are
refused rather than silently mixed in (``checkpoints/zhtune_run.json`` holds the fingerprint).
"""
from __future__ import annotations

import errno
import json
import os
import logging
import shutil
from pathlib import Path

from zhtune.artifacts import fingerprint
from zhtune.config import ExperimentConfig, config_to_dict
from zhtune.errors import UserError

log = logging.getLogger(__name__)

RUN_FILE = "zhtune_run.json"
# flock's errors on file systems that do not implement it (ENOTSUP is EOPNOTSUPP on Linux)
_NO_FLOCK = {errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOLCK}
_CKPT_PREFIX = "checkpoint-"


def checkpoint_is_complete(path: Path) -> bool:
    """True if the HF Trainer finished writing ``path`` (trainer_state.json is written last)."""
    try:
        json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    from zhtune.failures import safetensors_problem

    weights = [path / n for n in ("adapter_model.safetensors", "model.safetensors", "adapter_model.bin")]
    has_weights = any(w.exists() for w in weights)
    if any(w.suffix == ".safetensors" and w.exists() and safetensors_problem(w) for w in weights):
        return False  # truncated weights (a full disk, a damaged copy): not a checkpoint to resume
    has_optimizer = (path / "optimizer.pt").exists() or any(path.glob("global_step*"))
    return has_weights and has_optimizer


def checkpoint_step(path: Path) -> int:
    try:
        return int(path.name[len(_CKPT_PREFIX):])
    except ValueError:
        return -1


def latest_checkpoint(ckpt_dir: Path, remove_incomplete: bool = False) -> Path | None:
    """The newest complete checkpoint; incomplete ones are deleted when ``remove_incomplete``."""
    if not ckpt_dir.is_dir():
        return None
    found = None
    for path in sorted(ckpt_dir.glob(f"{_CKPT_PREFIX}*"), key=checkpoint_step, reverse=True):
        if checkpoint_step(path) < 0 or not path.is_dir():
            continue
        if checkpoint_is_complete(path):
            found = found or path
        elif remove_incomplete:
            log.warning("removing incomplete checkpoint %s (the run was stopped while writing it)",
                        path)
            shutil.rmtree(path, ignore_errors=True)
    return found


def run_fingerprint(cfg: ExperimentConfig, dataset_fp: str) -> str:
    """What decides the trained weights: resuming is refused when it changes."""
    train = cfg.train.model_dump(exclude={"report_to", "logging_steps", "save_steps",
                                          "save_total_limit", "probes", "deepspeed",
                                          "gradient_checkpointing", "eval_steps"})
    model = cfg.model.model_dump(exclude={"device"})
    return fingerprint("train", model, config_to_dict(cfg.lora), train, dataset_fp)


def lock_output(out: Path):
    """An exclusive lock on OUT: two runs writing one folder would interleave logs and checkpoints.

    ``flock`` is released by the kernel when the process dies, so a killed run never leaves a
    stale lock behind. Returns the open lock file (close it to release); None on Windows. Where the
    file system does not support flock (ENOSYS, EOPNOTSUPP: Lustre or BeeGFS without the option),
    training goes on with a warning instead of a lock.
    """
    try:
        import fcntl
    except ImportError:  # Windows
        return None
    f = open(out / ".train.lock", "w")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise UserError(f"{out} is being written by another `zhtune train` process; wait for it "
                        f"to finish or use another --output-dir") from None
    except OSError as err:
        if err.errno not in _NO_FLOCK:
            f.close()
            raise
        # Lustre / BeeGFS mounted without flock support, some NFS setups: train unguarded.
        log.warning("%s: this file system does not support locks (%s); not guarding against a "
                    "second `zhtune train` writing the same folder", out, os.strerror(err.errno))
    return f


def stop_on_signal_callback():
    """A TrainerCallback that, once SIGTERM / SIGINT was received (``zhtune.stopping.deferred``),
    saves a checkpoint at the current step and stops training; ``train`` then raises Stopped."""
    from transformers import TrainerCallback

    from zhtune.stopping import pending

    class StopOnSignal(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if pending() is not None:
                control.should_save = True
                control.should_training_stop = True
            return control

    return StopOnSignal()
