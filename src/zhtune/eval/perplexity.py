"""Bits per character on held-out Chinese and English text.

Perplexity per token cannot compare Llama and Qwen (their tokenizers cut text differently), so we
report the total negative log-likelihood of a text in bits divided by its number of characters.

Scoring policy:
* each text is scored on its own, conditioned on one document-start token: the BOS the tokenizer
  adds itself (Llama), else ``<|endoftext|>`` (Qwen, SmolLM2: their document separator), else BOS,
  else EOS. So every real token of the text is predicted, the first one included;
* a text longer than ``max_length`` tokens is scored in sliding windows of ``max_length`` tokens that
  advance by half a window: every token is scored exactly once, with at least ``max_length // 2``
  tokens of context (the first window has the conditioning token instead);
* windows are batched with right padding and an attention mask; padding never changes a score.

The probe texts are the 175 self-instruct seed tasks in Chinese (BELLE) and English (Alpaca):
instruction-like text that the BELLE / Alpaca training records never contain. Training on
instructions can lower their bits by teaching the genre (instruction, then answer) as much as the
language, so each language has a control probe of another genre too: exam questions that no
evaluation scores (``CONTROL_PROBES``). A drop on the seed tasks with none on the control says
"genre"; a drop on both says "language".
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from zhtune.errors import UserError

PROBE_FILES = {"zh": "belle/zh_seed_tasks.json", "en": "alpaca/seed_tasks.jsonl"}
# Control probes, per language: (benchmark, split) whose question text (question and options, never
# the answer) is scored for bits per character. Neither split is ever scored as a benchmark or used
# for few-shot examples: C-Eval's test labels are not public (scoring uses val, few-shot dev), and
# MMLU scores test with dev examples, leaving val unused.
CONTROL_PROBES = {"zh": ("ceval", "test"), "en": ("mmlu", "val")}
CONTROL_SUFFIX = "_control"  # summary.json's perplexity keys: "zh", "en", "zh_control", "en_control"

# Most logits held at once (batch x tokens x vocab); float32: 4 bytes each.
_MAX_LOGITS = 2**28


@dataclass
class PerplexityResult:
    bits_per_char: float
    chars: int
    tokens: int  # text tokens scored (the conditioning token not counted)
    # Per text, in input order: its characters and its negative log-likelihood in bits. A paired
    # interval on a change of bits per character treats each text as one observation.
    per_text: list[tuple[int, float]] | None = None


# ----------------------------------------------------------------------------- probe texts

def _seed_task_text(task: dict) -> str:
    """A seed task as natural text: the instruction, then each instance's input and output."""
    parts = [task["instruction"].strip()]
    for inst in task.get("instances", []):
        for key in ("input", "output"):
            value = (inst.get(key) or "").strip()
            if value:
                parts.append(value)
    return "\n".join(p for p in parts if p)


def _task_number(task: dict) -> tuple[int, str]:
    match = re.search(r"(\d+)$", str(task.get("id", "")))
    return (int(match.group(1)) if match else 1 << 30, str(task.get("id", "")))


def probe_texts(lang: str, data_dir: str | Path | None = None, max_chars: int = 20000) -> list[str]:
    """The held-out texts for ``lang`` ("zh" or "en"), in seed-task id order, cut to ``max_chars``
    characters in all (the last text is truncated; fewer when the file has less text)."""
    from zhtune.io import default_data_dir

    if lang not in PROBE_FILES:
        raise UserError(f"perplexity probe language must be one of {', '.join(PROBE_FILES)}, got {lang!r}")
    root = default_data_dir(data_dir)
    if root is None:
        raise UserError(f"perplexity probes need a data folder with {PROBE_FILES[lang]}: "
                        "pass --data-dir or set ZHTUNE_DATA_DIR")
    path = Path(root) / PROBE_FILES[lang]
    if not path.is_file():
        raise UserError(f"{path}: missing; the {lang} perplexity probe reads {PROBE_FILES[lang]} "
                        f"from the data folder")
    tasks = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                task = json.loads(line)
                if not isinstance(task, dict) or not isinstance(task.get("instruction"), str):
                    raise ValueError("no 'instruction' string")
            except ValueError as err:
                raise UserError(f"{path}, line {line_no}: not a seed task ({err})") from None
            tasks.append(task)
    return _cut([_seed_task_text(task) for task in sorted(tasks, key=_task_number)], max_chars)


def _cut(texts: list[str], max_chars: int) -> list[str]:
    """The texts in order until ``max_chars`` characters in all (the last one truncated)."""
    out, total = [], 0
    for text in texts:
        if total >= max_chars:
            break
        text = text[: max_chars - total]
        if text:
            out.append(text)
            total += len(text)
    return out


def control_texts(lang: str, data_dir: str | Path | None = None, max_chars: int = 20000) -> list[str]:
    """The control probe's texts for ``lang`` (``CONTROL_PROBES``): one exam question per text, its
    question then its options, one per line, without letters or answer; taken round-robin over the
    subjects (by name, then file order) so every subject appears, cut to ``max_chars`` characters."""
    from zhtune.data.benchmarks import load_benchmark, round_robin
    from zhtune.io import default_data_dir

    if lang not in CONTROL_PROBES:
        raise UserError(f"control probe language must be one of {', '.join(CONTROL_PROBES)}, got {lang!r}")
    benchmark, split = CONTROL_PROBES[lang]
    root = default_data_dir(data_dir)
    if root is None:
        raise UserError(f"the {lang} control probe needs a data folder with {benchmark}/{split}/: "
                        "pass --data-dir or set ZHTUNE_DATA_DIR")
    questions = load_benchmark(benchmark, split, data_dir=root, require_answers=False)
    texts = ("\n".join([q.question.strip(), *(c.strip() for c in q.choices)]).strip()
             for q in round_robin(questions, len(questions)))
    return _cut([t for t in texts if t], max_chars)


def probe_description(probe: str) -> dict:
    """What a perplexity key of summary.json measured: ``{"lang", "kind", "source"}``."""
    lang = probe.removesuffix(CONTROL_SUFFIX)
    if probe.endswith(CONTROL_SUFFIX):
        benchmark, split = CONTROL_PROBES[lang]
        return {"lang": lang, "kind": "control",
                "source": f"{benchmark}/{split}: question and options, round-robin over subjects"}
    return {"lang": lang, "kind": "seed_tasks", "source": PROBE_FILES[lang]}


# ----------------------------------------------------------------------------- scoring

def conditioning_token(tokenizer: Any) -> int:
    """The token a document starts after (see the module docstring)."""
    bos = tokenizer.bos_token_id
    if bos is not None:
        ids = tokenizer("a", add_special_tokens=True)["input_ids"]
        if ids and ids[0] == bos:
            return bos
    vocab = tokenizer.get_vocab()
    eot = vocab.get("<|endoftext|>")
    for candidate in (eot, bos, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    raise ValueError("the tokenizer has no BOS, <|endoftext|> or EOS token to condition on")


def _windows(ids: list[int], max_length: int) -> list[tuple[list[int], int]]:
    """(window token ids, number of tokens at its end to score) covering ``ids[1:]`` exactly once."""
    if len(ids) <= max_length:
        return [(ids, len(ids) - 1)]
    stride = max(1, max_length // 2)
    out = [(ids[:max_length], max_length - 1)]
    scored_to = max_length  # ids[:scored_to] are predicted (or the conditioning token)
    while scored_to < len(ids):
        end = min(scored_to + stride, len(ids))
        start = end - max_length
        out.append((ids[start:end], end - scored_to))
        scored_to = end
    return out


@torch.inference_mode()
def bits_per_char(model: Any, tokenizer: Any, texts: list[str], *, max_length: int = 1024,
                  batch_size: int = 8) -> PerplexityResult:
    """Total negative log-likelihood of ``texts`` in bits, per character (see the module docstring)."""
    if max_length < 2:
        raise ValueError("max_length must be at least 2")
    texts = [t for t in texts if t]
    chars = sum(len(t) for t in texts)
    if chars == 0:
        raise ValueError("no text to score")
    start = conditioning_token(tokenizer)
    pieces = []  # (window ids, tokens to score, text index)
    for index, text in enumerate(texts):
        ids = [start] + tokenizer(text, add_special_tokens=False)["input_ids"]
        pieces.extend((seq, n, index) for seq, n in _windows(ids, max_length))
    pieces.sort(key=lambda p: -len(p[0]))  # similar lengths together: little padding
    text_nats = [0.0] * len(texts)

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    vocab = model.get_output_embeddings().weight.shape[0]
    total_nats, total_tokens = 0.0, 0
    i = 0
    try:
        while i < len(pieces):
            width = len(pieces[i][0])  # the longest piece of this batch
            fit = max(1, min(batch_size, _MAX_LOGITS // max(1, width * vocab)))
            batch = pieces[i:i + fit]
            i += len(batch)
            ids = torch.zeros((len(batch), width), dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            scored = torch.zeros((len(batch), width), dtype=torch.bool)
            for row, (seq, n_scored, _) in enumerate(batch):  # right padding
                ids[row, :len(seq)] = torch.tensor(seq)
                mask[row, :len(seq)] = 1
                scored[row, len(seq) - n_scored:len(seq)] = True
            ids, mask, scored = ids.to(device), mask.to(device), scored.to(device)
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
            # the logits at t predict token t+1
            target_mask = scored[:, 1:]
            pred = logits[:, :-1][target_mask].float()
            target = ids[:, 1:][target_mask]
            nats = torch.nn.functional.cross_entropy(pred, target, reduction="none")
            rows = target_mask.nonzero()[:, 0]  # the batch row of every scored token
            per_row = torch.zeros(len(batch), dtype=torch.float64).index_add_(0, rows.cpu(), nats.double().cpu())
            for row, (_, _, index) in enumerate(batch):
                text_nats[index] += per_row[row].item()
            total_nats += float(per_row.sum())
            total_tokens += int(target_mask.sum())
    finally:
        model.train(was_training)
    return PerplexityResult(bits_per_char=total_nats / math.log(2) / chars, chars=chars,
                            tokens=total_tokens,
                            per_text=[(len(t), n / math.log(2)) for t, n in zip(texts, text_nats)])
