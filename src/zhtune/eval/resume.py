"""Evaluation that resumes where it stopped: predictions committed in chunks.

A label's evaluation (``OUT/<label>/``) is cut into chunks: one per subject of a multiple-choice
benchmark and formulation (``ceval/computer_network``, ``ceval_cloze/computer_network``), one per
``GENERATION_CHUNK`` questions of a generation benchmark (``gsm8k/00064-00128``), and the perplexity
probes. Each finished chunk is committed at once under ``OUT/<label>/chunks/`` with the fingerprint
of the run (settings and question keys, model, adapter weights, scale, dtype: ``run_fingerprint``),
by the rule in ``zhtune.artifacts`` (open_chunks / read_chunk / commit_chunk). A killed or stopped
evaluation loses at most the chunk it was in; the same command again reads the committed chunks and
scores only the missing ones, and the finished folder equals an uninterrupted run's (everything
scores chunk by chunk either way). Once ``summary.json`` is written the chunks are removed, and a
rerun whose fingerprint matches the summary's ``resume_fingerprint`` reuses the finished folder.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from zhtune import distributed
from zhtune.artifacts import CHUNKS_DIR, commit_chunk, fingerprint, open_chunks, read_chunk, sha256_file
from zhtune.errors import UserError
from zhtune.io import iter_jsonl, read_json

log = logging.getLogger(__name__)

GENERATION_CHUNK = 64  # GSM8K questions per committed chunk: a multiple of the usual batch sizes

# (questions, show a progress bar) -> (prediction rows, counters such as cache fallbacks)
Score = Callable[[list, bool], "tuple[list[dict], dict]"]


def run_fingerprint(settings_fp: str, meta: dict) -> str:
    """What decides the rows an evaluation writes: the settings and question keys (``settings_fp``),
    the model, the adapter's weights and scale, and the precision and kind of device."""
    from zhtune import __version__

    adapter = meta.get("adapter")
    weights = Path(adapter) / "adapter_model.safetensors" if adapter else None
    return fingerprint("eval-run", settings_fp, meta.get("model"), adapter, meta.get("adapter_scale"),
                       sha256_file(weights) if weights and weights.is_file() else None,
                       meta.get("dtype"), str(meta.get("device", "")).split(":")[0], GENERATION_CHUNK,
                       __version__)


def finished(folder: Path, fp: str) -> tuple[dict, list[dict], list[dict] | None] | None:
    """(summary, predictions, prompts or None) of a finished evaluation in ``folder`` made with
    fingerprint ``fp``; None when there is none. A finished folder whose predictions are damaged is
    an error naming the file and the fix."""
    summary_path = folder / "summary.json"
    try:
        summary = read_json(summary_path)
    except (OSError, ValueError):
        return None
    if not isinstance(summary, dict) or summary.get("resume_fingerprint") != fp:
        return None
    fix = f"delete {folder} to evaluate it again"
    preds_path = folder / "predictions.jsonl"
    try:
        rows = [row for _, row in iter_jsonl(preds_path)]
    except UserError as err:
        raise UserError(f"{err}; {fix}") from None
    except OSError as err:
        raise UserError(f"{preds_path}: cannot read ({err.strerror}); {fix}") from None
    if len(rows) != summary.get("throughput", {}).get("questions"):
        raise UserError(f"{preds_path}: {len(rows)} predictions, summary.json counts "
                        f"{summary.get('throughput', {}).get('questions')} (truncated); {fix}")
    prompts_path = folder / "prompts.jsonl"
    prompts = [row for _, row in iter_jsonl(prompts_path)] if prompts_path.is_file() else None
    log.info("%s: finished with these settings; reused", folder)
    return summary, rows, prompts


class Chunks:
    """The committed chunks of one label's evaluation (or none: ``folder`` None computes all)."""

    def __init__(self, folder: Path | None, fp: str):
        self.dir = _open_on_main(folder, fp) if folder is not None else None
        self.reused = self.scored = 0

    def once(self, name: str, compute: Callable[[], Any]) -> tuple[Any, float]:
        """``compute()``'s value and its seconds, committed as chunk ``name`` (or read back)."""
        got = read_chunk(self.dir, name) if self.dir is not None else None
        if got is None:
            t0 = time.perf_counter()
            got = {"value": compute(), "seconds": time.perf_counter() - t0}
            if self.dir is not None and distributed.is_main():  # under a launch, rank 0 writes
                commit_chunk(self.dir, name, got)
            self.scored += 1
        else:
            self.reused += 1
        return got["value"], got["seconds"]

    def score(self, name: str, questions: Sequence, score: Score, *, generate: bool,
              progress: bool = True) -> tuple[list[dict], float, dict]:
        """Rows of ``questions`` in their order, scored chunk by chunk with ``score(questions, bar)``
        (missing chunks only); also the seconds scoring took (in this run and earlier ones) and the
        chunks' counters summed."""
        from zhtune.eval.progress import progress_bar

        parts = split(name, questions, generate)
        inner = progress and len(parts) == 1  # one bar: the scorer's, or this one over the chunks
        placed: list[tuple[int, dict]] = []
        seconds, counters = 0.0, {}
        with progress_bar(len(questions) if len(parts) > 1 else 0, name, progress) as advance:
            for chunk, group in parts:
                value, s = self.once(chunk, lambda: _rows_and_counters(score, [q for _, q in group], inner))
                rows, extra = value
                if len(rows) != len(group):
                    raise UserError(f"{self.dir}: chunk {chunk} holds {len(rows)} rows for "
                                    f"{len(group)} questions; delete {self.dir} to start over")
                placed += [(i, row) for (i, _), row in zip(group, rows)]
                seconds += s
                for k, v in extra.items():
                    counters[k] = counters.get(k, 0) + v
                advance(len(group))
        return [row for _, row in sorted(placed, key=lambda p: p[0])], seconds, counters


def _open_on_main(folder: Path, fp: str) -> Path:
    """``open_chunks`` on rank 0 (it may clear a stale folder), its error raised on every rank.

    Every rank reads a chunk before scoring it, and rank 0 commits it only after the chunk's rows
    were gathered from all ranks, so the ranks always agree on which chunks are done."""
    error = None
    if distributed.is_main():
        try:
            open_chunks(folder, fp, "evaluation")
        except UserError as err:
            error = str(err)
    error = distributed.broadcast_from_main(error)
    if error:
        raise UserError(error)
    return Path(folder) / CHUNKS_DIR


def _rows_and_counters(score: Score, questions: list, progress: bool) -> list:
    rows, counters = score(questions, progress)
    return [rows, counters]


def split(name: str, questions: Sequence, generate: bool) -> list[tuple[str, list[tuple[int, Any]]]]:
    """(chunk name, [(position, question)]): per subject in order of first appearance, or per
    ``GENERATION_CHUNK`` questions of a generation benchmark."""
    indexed = list(enumerate(questions))
    if generate:
        return [(f"{name}/{i:05d}-{min(i + GENERATION_CHUNK, len(indexed)):05d}",
                 indexed[i:i + GENERATION_CHUNK]) for i in range(0, len(indexed), GENERATION_CHUNK)]
    by_subject: dict[str, list[tuple[int, Any]]] = {}
    for i, q in indexed:
        by_subject.setdefault(q.subject, []).append((i, q))
    return [(f"{name}/{subject}", group) for subject, group in by_subject.items()]
