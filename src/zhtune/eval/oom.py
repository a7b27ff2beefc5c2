"""The one rule for running out of accelerator memory during evaluation.

A forward pass over several rows that runs out of memory is retried with half the limit (tokens
per pass for the choice scorer, sequences for GSM8K generation), and the smaller limit is kept for
the rest of the run: the next batches are no smaller in memory than the one that failed. A pass of
a single row has nothing left to halve, so its error is raised.
"""
from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)

OutOfMemory = torch.OutOfMemoryError  # torch.cuda.OutOfMemoryError; what any accelerator raises


def halve_after_oom(err: BaseException, limit: int, rows: int, unit: str) -> int:
    """The limit to continue with after ``err`` in a pass of ``rows`` rows under a limit of
    ``limit`` ``unit`` ("tokens", "sequences") per pass; re-raises ``err`` when ``rows`` is 1."""
    if rows <= 1:
        raise err
    smaller = max(1, limit // 2)
    log.warning("out of memory with %d rows in one pass (limit %d %s); continuing with at most %d %s",
                rows, limit, unit, smaller, unit)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # hand back the failed pass's blocks before the retry
    return smaller
