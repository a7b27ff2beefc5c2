"""Which device a process uses and in which precision: each rule decided here, once.

* **One process, one device.** A process uses exactly the device the config names (``cuda``,
  ``cuda:1``, ``cpu``; ``auto``: the first GPU, else the CPU). Several GPUs are used only under a
  distributed launch (``--nproc N``: torchrun), where each process takes the GPU of its local rank.
* **Precision ``auto``** (``train.precision``, ``model.dtype``): ``auto_precision``.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from zhtune.errors import UserError

# bf16 matrix units arrived with Ampere (compute capability 8.0: A100, RTX 30xx; later H100, L40).
# Older GPUs (V100 7.0, T4 / RTX 20xx 7.5) run bf16 emulated, far slower than their fp16 units,
# although torch.cuda.is_bf16_supported() says True there.
NATIVE_BF16_CAPABILITY = (8, 0)

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def launched_processes() -> int:
    """Processes of the distributed launch this process belongs to (torchrun / accelerate
    launch set WORLD_SIZE); 1 outside one."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def local_rank() -> int:
    try:
        return int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        return 0


def pick_device(requested: str = "auto") -> torch.device:
    """The one device this process uses (``model.device``).

    Under a distributed launch of several processes, ``auto`` and ``cuda`` mean the GPU of this
    process's local rank; one named GPU (``cuda:1``) cannot be shared by all of them and is refused.
    """
    world = launched_processes()
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(requested)
    if device.type == "cuda" and world > 1:
        if device.index is not None:
            raise UserError(f"model.device={requested} names one GPU, but {world} processes were "
                            f"launched: use model.device=cuda (each process takes the GPU of its "
                            f"local rank), or choose GPUs with CUDA_VISIBLE_DEVICES")
        return torch.device("cuda", local_rank())
    return device


def cuda_native_bf16(device: torch.device) -> bool:
    """True if ``device`` (a CUDA device; no index: the current one) has bf16 matrix units."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    return tuple(torch.cuda.get_device_capability(index)) >= NATIVE_BF16_CAPABILITY


def cpu_supports_bf16(cpuinfo: str | None = None) -> bool:
    """True if the CPU multiplies bf16 natively (avx512_bf16 or AMX): then bf16 autocast pays off."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return False  # not Linux: no way to tell, so the safe choice
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[-1].split())
            break
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def auto_precision(device: torch.device, *, training: bool) -> str:
    """Precision ``auto`` on ``device``: ``bf16``, ``fp16`` or ``fp32``. The one place it is decided.

    * CUDA: bf16 where it is native (compute capability >= 8.0), else fp16 (training then scales
      the loss: the HF Trainer's fp16 mode uses a gradient scaler).
    * CPU: weights load in fp32 (evaluation is fp32 there, see ``eval.suite.check_eval_dtype``);
      training autocasts to bf16 where the CPU multiplies bf16 natively, else stays fp32.
    * Anything else (mps): fp32.
    """
    if device.type == "cuda":
        return "bf16" if cuda_native_bf16(device) else "fp16"
    if device.type == "cpu" and training and cpu_supports_bf16():
        return "bf16"
    return "fp32"


def auto_dtype(device: torch.device) -> torch.dtype:
    """``model.dtype: auto``: the weights' dtype for loading on ``device``."""
    return _DTYPES[auto_precision(device, training=False)]


def multi_gpu_hint(device: torch.device) -> str | None:
    """One line for a single process on a machine with several GPUs: how to use them all."""
    if device.type != "cuda" or launched_processes() > 1:
        return None
    count = torch.cuda.device_count()
    if count < 2:
        return None
    return (f"this process trains on {device} only, one of {count} visible GPUs; to train on all of "
            f"them run with --nproc {count} (config train.num_processes: {count})")
