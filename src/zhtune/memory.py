"""Memory between pipeline stages: free what a stage left behind, and measure what is held.

``zhtune run`` calls ``release`` after every stage (the trained model, its optimizer state and the
Trainer sit in reference cycles that only a collection frees) and records ``snapshot`` at each
stage boundary in the run's ``timings.json``.
"""
from __future__ import annotations

import gc
import resource
import sys

import torch

_MB = 1024 * 1024


def release() -> None:
    """Collect unreachable objects (models in reference cycles) and hand cached GPU blocks back."""
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def snapshot() -> dict:
    """This process's memory now: resident set and its peak so far (MB), and on CUDA the memory
    held by tensors, reserved by the allocator, and the peak held since the last snapshot."""
    import psutil

    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux, bytes on macOS
    rss = psutil.Process().memory_info().rss / _MB
    peak = peak_kb / (_MB if sys.platform == "darwin" else 1024)
    # max: the kernel's peak and psutil's current figure are sampled separately
    out = {"rss_mb": round(rss, 1), "peak_rss_mb": round(max(peak, rss), 1)}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out.update({"cuda_allocated_mb": round(torch.cuda.memory_allocated() / _MB, 1),
                    "cuda_reserved_mb": round(torch.cuda.memory_reserved() / _MB, 1),
                    "cuda_peak_allocated_mb": round(torch.cuda.max_memory_allocated() / _MB, 1)})
        torch.cuda.reset_peak_memory_stats()  # the next snapshot's peak is the next stage's
    return out
