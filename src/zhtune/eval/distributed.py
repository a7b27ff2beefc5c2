"""Evaluation under a distributed launch: each process scores its share of the questions, and the
rows are gathered so that every process (rank 0 writes) holds them all, in the one-process order.

The shares are contiguous blocks, so questions of one subject stay together and keep sharing their
few-shot prefix; concatenating the blocks in rank order restores the order of the full list. Each
question is scored independently of its batch (tested: batched = one-by-one), and GSM8K's few-shot
draws depend on a question's position in its file, not in the list, so the predictions equal those
of one process. Outside a launch these functions are the identity.

Bits per character are shared the same way, by text: each process scores its block of the probe
texts and the per-text bits are gathered (a text's bits do not depend on the others).
"""
from __future__ import annotations

from typing import Any, Sequence, TypeVar

from zhtune import distributed

T = TypeVar("T")


def share(items: Sequence[T], rank: int | None = None, world: int | None = None) -> list[T]:
    """This process's contiguous block of ``items`` (sizes differ by at most one)."""
    world = distributed.world_size() if world is None else world
    if world == 1:
        return list(items)
    rank = distributed.rank() if rank is None else rank
    n = len(items)
    return list(items[rank * n // world:(rank + 1) * n // world])


def gather_rows(rows: list[dict]) -> list[dict]:
    """Every process's rows, concatenated in rank order (the order of the unshared list)."""
    return [row for part in distributed.all_gather(rows) for row in part]


def gather_count(count: int) -> int:
    return sum(distributed.all_gather(count))


def shared_bits_per_char(model: Any, tokenizer: Any, texts: list[str], *, batch_size: int = 8):
    """``perplexity.bits_per_char`` over ``texts``, each process scoring its block of them."""
    from zhtune.eval.perplexity import PerplexityResult, bits_per_char

    texts = [t for t in texts if t]
    if distributed.world_size() == 1:
        return bits_per_char(model, tokenizer, texts, batch_size=batch_size)
    mine = share(texts)
    part = bits_per_char(model, tokenizer, mine, batch_size=batch_size) if mine else PerplexityResult(0.0, 0, 0, [])
    parts = distributed.all_gather((part.tokens, part.per_text))
    per_text = [text for _, texts_of_rank in parts for text in texts_of_rank]
    chars = sum(c for c, _ in per_text)
    return PerplexityResult(bits_per_char=sum(bits for _, bits in per_text) / chars, chars=chars,
                            tokens=sum(tokens for tokens, _ in parts), per_text=per_text)
