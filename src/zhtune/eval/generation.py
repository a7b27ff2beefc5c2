"""GSM8K: greedy generation with per-sequence stop strings, and answer extraction.

Generation is our own small greedy loop over ``model.forward`` rather than ``model.generate``,
because we want what ``generate`` does not do:

* continuous batching: a sequence that hits a stop string leaves the batch (its rows are dropped
  from the KV cache) and the next prompt takes its place, so one rambling answer does not keep the
  others computing until ``max_new_tokens``; on a CPU a decoding step costs about the same for one
  sequence as for eight, so keeping the batch full is what makes GSM8K affordable;
* the few-shot prefix that every prompt shares is run once and its KV cache reused for every
  prompt (the prompts are tokenised whole and their longest common token prefix is what is
  shared, so the model sees exactly the tokens of the unshared prompt).

Prompts are left-padded (joining prompts are padded between the shared prefix and their own
tokens), and position ids skip the padding, so every sequence is computed as it would be alone:
batched greedy output equals one-by-one greedy output and ``model.generate`` (tested).
"""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Iterable, Sequence

import torch

from zhtune.data.benchmarks import Question
from zhtune.data.prompts import common_prefix_len, encode_prompt
from zhtune.eval.progress import progress_bar

# Shortest shared prefix (in tokens) worth a separate forward pass.
MIN_SHARED_PREFIX = 16
# Compact the KV cache once this many columns are padding no running sequence uses.
COMPACT_MIN_COLUMNS = 64

# lm-evaluation-harness's GSM8K stops ("Question:" ends the answer in the n-shot format).
GSM8K_STOPS = ("Question:", "</s>", "<|im_end|>")

_NUMBER = r"-?(?:\$\s?)?(?:\d[\d,]*(?:\.\d+)?|\.\d+)"
_STRICT = [re.compile(r"####\s*(" + _NUMBER + ")"),
           re.compile(r"[Tt]he answer is\s*:?\s*(" + _NUMBER + ")")]
_FLEXIBLE = re.compile(_NUMBER)


@dataclass
class GenerationPrediction:
    question: Question
    generation: str  # the model's text, cut at the first stop string
    extracted_strict: str | None  # normalised number after '####' (or 'The answer is'), if any
    extracted_flexible: str | None  # normalised last number in the generation, if any
    gold: str  # normalised number after '####' in the reference solution
    correct_strict: bool
    correct: bool  # flexible match: what "accuracy" means for GSM8K in summary.json


# ----------------------------------------------------------------------------- answers

def normalize_number(s: str) -> str:
    """A canonical spelling of a number: no '$', commas, '+', spaces or trailing '.'; '72.0' -> '72',
    '2.50' -> '2.5', '-0' -> '0'. Text that is not a number comes back stripped, unchanged."""
    text = s.strip().replace(",", "").replace("$", "").replace(" ", "").rstrip(".")
    if text.startswith("+"):
        text = text[1:]
    try:
        value = Decimal(text)
    except InvalidOperation:
        return s.strip()
    if not value.is_finite():
        return s.strip()
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def gsm8k_gold(answer_text: str) -> str:
    """The reference answer: the number after the last '####' of a GSM8K solution, normalised."""
    if "####" not in answer_text:
        raise ValueError(f"GSM8K solution without '####': {answer_text[-80:]!r}")
    return normalize_number(answer_text.rsplit("####", 1)[1].strip().split()[0])


def extract_strict(text: str) -> str | None:
    """The number after the first '#### ' (the n-shot format), else after the first 'The answer is'
    (the chain-of-thought format); None when the model wrote neither."""
    for pattern in _STRICT:
        match = pattern.search(text)
        if match:
            return normalize_number(match.group(1))
    return None


def extract_flexible(text: str) -> str | None:
    """The last number anywhere in the text (as lm-eval's 'flexible-extract'); None if there is none."""
    numbers = _FLEXIBLE.findall(text)
    return normalize_number(numbers[-1]) if numbers else None


def cut_at_stop(text: str, stops: Iterable[str]) -> str:
    """``text`` up to the first occurrence of any stop string."""
    cut = len(text)
    for stop in stops:
        if stop:
            pos = text.find(stop)
            if 0 <= pos < cut:
                cut = pos
    return text[:cut]


# ----------------------------------------------------------------------------- generation

def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids = set()
    for source in (getattr(model, "generation_config", None), getattr(model, "config", None), tokenizer):
        value = getattr(source, "eos_token_id", None)
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return ids


def _model_device(model: Any) -> torch.device:
    return next(model.parameters()).device


@torch.inference_mode()
def _prefix_cache(model: Any, prefix: list[int], device: torch.device):
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    ids = torch.tensor([prefix], device=device)
    model(input_ids=ids, attention_mask=torch.ones_like(ids), cache=cache, use_cache=True,
          logits_to_keep=1)
    return cache


def _editable(cache) -> bool:
    """Plain full-attention layers, whose key/value columns we may insert and drop. (Sliding-window
    layers trim themselves; with those, sequences still leave the batch but none join it.)"""
    from transformers.cache_utils import DynamicLayer

    return all(type(layer) is DynamicLayer for layer in getattr(cache, "layers", [None]))


@dataclass
class _Running:
    """The sequences being generated: one row each in the KV cache and the attention mask.

    Every row's cache holds ``[shared prefix][padding][its prompt][its tokens so far]``; the mask
    hides the padding, and positions are kept per row, so a row computes exactly as it would alone.
    """
    cache: Any
    mask: torch.Tensor  # (rows, columns) 1 = a real token
    next_pos: torch.Tensor  # (rows, 1) position of the token each row feeds next
    logits: torch.Tensor  # (rows, vocab) next-token logits of each row
    index: list[int]  # the prompt each row answers
    generated: list[list[int]]

    def pad_columns(self, at: int, n: int) -> None:
        """Insert ``n`` masked columns before column ``at`` (to align with a longer batch)."""
        if n <= 0:
            return
        for layer in self.cache.layers:
            for name in ("keys", "values"):
                t = getattr(layer, name)
                gap = t.new_zeros(t.shape[0], t.shape[1], n, t.shape[3])
                setattr(layer, name, torch.cat([t[:, :, :at], gap, t[:, :, at:]], dim=2))
        gap = self.mask.new_zeros(self.mask.shape[0], n)
        self.mask = torch.cat([self.mask[:, :at], gap, self.mask[:, at:]], dim=1)

    def absorb(self, other: "_Running", prefix_len: int) -> None:
        """Add ``other``'s rows (new prompts) to this batch."""
        width, other_width = self.mask.shape[1], other.mask.shape[1]
        self.pad_columns(prefix_len, other_width - width)
        other.pad_columns(prefix_len, width - other_width)
        for mine, theirs in zip(self.cache.layers, other.cache.layers):
            mine.keys = torch.cat([mine.keys, theirs.keys], dim=0)
            mine.values = torch.cat([mine.values, theirs.values], dim=0)
        self.mask = torch.cat([self.mask, other.mask], dim=0)
        self.next_pos = torch.cat([self.next_pos, other.next_pos], dim=0)
        self.logits = torch.cat([self.logits, other.logits], dim=0)
        self.index += other.index
        self.generated += other.generated

    def keep_rows(self, keep: list[int]) -> None:
        rows = torch.tensor(keep, device=self.mask.device)
        self.cache.batch_select_indices(rows)
        self.mask, self.next_pos = self.mask[rows], self.next_pos[rows]
        self.index = [self.index[i] for i in keep]
        self.generated = [self.generated[i] for i in keep]

    def drop_dead_columns(self, prefix_len: int) -> None:
        """Forget columns no remaining row uses (left behind by finished rows)."""
        alive = self.mask.bool().any(dim=0)
        alive[:prefix_len] = True
        if int((~alive).sum()) < COMPACT_MIN_COLUMNS:
            return
        cols = alive.nonzero().squeeze(1)
        for layer in self.cache.layers:
            layer.keys, layer.values = layer.keys[:, :, cols], layer.values[:, :, cols]
        self.mask = self.mask[:, cols]


@torch.inference_mode()
def _start(model, suffixes: list[list[int]], index: list[int], prefix_len: int, prefix_cache,
           pad_id: int) -> _Running:
    """Run new prompts (the part after the shared prefix), left-padded, through the model."""
    from transformers import DynamicCache

    device = _model_device(model)
    batch = len(suffixes)
    width = max(len(s) for s in suffixes)
    ids = torch.full((batch, width), pad_id, dtype=torch.long)
    mask = torch.zeros((batch, width), dtype=torch.long)
    for row, seq in enumerate(suffixes):  # left padding: the last column is every prompt's last token
        ids[row, width - len(seq):] = torch.tensor(seq)
        mask[row, width - len(seq):] = 1
    ids, mask = ids.to(device), mask.to(device)
    # Positions count real tokens only, so padding does not shift a prompt (pads get position 0).
    positions = (prefix_len + mask.cumsum(-1) - 1).clamp(min=prefix_len) * mask
    if prefix_cache is not None:
        cache = copy.deepcopy(prefix_cache)
        cache.batch_repeat_interleave(batch)
        mask = torch.cat([torch.ones((batch, prefix_len), dtype=mask.dtype, device=device), mask], 1)
    else:
        cache = DynamicCache(config=model.config)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache,
                use_cache=True, logits_to_keep=1)
    return _Running(cache=cache, mask=mask, next_pos=positions[:, -1:] + 1,
                    logits=out.logits[:, -1, :], index=list(index),
                    generated=[[] for _ in range(batch)])


def generate_greedy(model: Any, tokenizer: Any, prompts: list[str], *, stop_strings: list[str],
                    max_new_tokens: int = 256, batch_size: int = 8, progress: bool = True,
                    share_prefix: bool = True) -> list[str]:
    """Greedy continuations of ``prompts``, each cut at its first stop string (or EOS token).

    Up to ``batch_size`` sequences run together, longest prompts first. A sequence that finishes
    leaves the batch at once and the next prompt takes its place (continuous batching), so one long
    answer does not hold up the others. The longest token prefix shared by all prompts (the
    few-shot examples) is computed once and its KV cache reused (``share_prefix=False``: not).
    """
    if not prompts:
        return []
    if max_new_tokens < 1 or batch_size < 1:
        raise ValueError("max_new_tokens and batch_size must be positive")
    was_training = model.training
    model.eval()
    device = _model_device(model)
    encoded = [encode_prompt(tokenizer, p) for p in prompts]
    if any(len(e) == 0 for e in encoded):
        raise ValueError("cannot generate from an empty prompt")
    prefix_len = common_prefix_len(encoded) if share_prefix else 0
    prefix_len = min(prefix_len, min(len(e) for e in encoded) - 1)  # every prompt keeps a token
    if prefix_len < MIN_SHARED_PREFIX:
        prefix_len = 0
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    eos_ids = _eos_ids(model, tokenizer)
    stops = [s for s in stop_strings if s]

    pending = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))[::-1]  # pop() = longest
    results: list[str] = [""] * len(prompts)
    running: _Running | None = None
    refill = True
    try:
        with progress_bar(len(prompts), "generating", progress) as advance, torch.inference_mode():
            prefix_cache = _prefix_cache(model, encoded[0][:prefix_len], device) if prefix_len else None
            while pending or running is not None:
                free = batch_size - (len(running.index) if running else 0)
                if pending and free > 0 and (running is None or refill):
                    take = [pending.pop() for _ in range(min(free, len(pending)))]
                    new = _start(model, [encoded[i][prefix_len:] for i in take], take, prefix_len,
                                 prefix_cache, pad_id)
                    refill = refill and _editable(new.cache)
                    if running is None:
                        running = new
                    else:
                        running.absorb(new, prefix_len)
                tokens = running.logits.argmax(-1).tolist()
                keep = []
                for row, token in enumerate(tokens):
                    generated = running.generated[row]
                    done = token in eos_ids
                    if not done:
                        generated.append(token)
                    text = tokenizer.decode(generated, skip_special_tokens=False)
                    if done or len(generated) >= max_new_tokens or any(s in text for s in stops):
                        results[running.index[row]] = cut_at_stop(text, stops)
                        advance(1)
                    else:
                        keep.append(row)
                if not keep:
                    running = None
                    continue
                if len(keep) < len(tokens):  # finished sequences leave the batch and the cache
                    running.keep_rows(keep)
                    if refill:
                        running.drop_dead_columns(prefix_len)
                step_ids = torch.tensor([[tokens[row]] for row in keep], device=device)
                running.mask = torch.cat([running.mask, running.mask.new_ones(len(keep), 1)], dim=1)
                out = model(input_ids=step_ids, attention_mask=running.mask,
                            position_ids=running.next_pos, cache=running.cache, use_cache=True)
                running.logits = out.logits[:, -1, :]
                running.next_pos = running.next_pos + 1
    finally:
        model.train(was_training)
    return results


# ----------------------------------------------------------------------------- GSM8K

def gsm8k_prompts(tokenizer: Any, family: Any, questions: Sequence[Question], *, shots: int = 5,
                  cot: bool = False, data_dir=None, chat: bool = False) -> list[str]:
    """The harness prompts: the first ``shots`` train solutions (or the 8 CoT exemplars), then the
    test item ``Question: {q}\nAnswer:``; in the chat template when ``chat``."""
    from zhtune.data.benchmarks import few_shot_examples
    from zhtune.data.prompts import gsm8k_item, gsm8k_prefix, wrap_chat

    examples = few_shot_examples("gsm8k", "main", shots, data_dir=data_dir) if shots and not cot else []
    prefix = gsm8k_prefix(examples, cot=cot)
    texts = [prefix + gsm8k_item(q) for q in questions]
    if chat:
        texts = [wrap_chat(tokenizer, family, t) for t in texts]
    return texts


def gsm8k_stop_strings(tokenizer: Any, family: Any) -> list[str]:
    """'Question:' (the next few-shot item; the CoT variant uses the same layout), '</s>',
    '<|im_end|>', the family's stop strings and the tokenizer's EOS."""
    from zhtune.models.families import stop_strings

    stops = list(GSM8K_STOPS)
    if family is not None:
        stops += stop_strings(tokenizer, family)
    elif getattr(tokenizer, "eos_token", None):
        stops.append(tokenizer.eos_token)
    return list(dict.fromkeys(stops))


def score_generation(question: Question, generation: str) -> GenerationPrediction:
    gold = gsm8k_gold(question.answer or "")
    strict = extract_strict(generation)
    flexible = extract_flexible(generation)
    return GenerationPrediction(question=question, generation=generation, extracted_strict=strict,
                                extracted_flexible=flexible, gold=gold,
                                correct_strict=strict == gold, correct=flexible == gold)


def evaluate_gsm8k(model: Any, tokenizer: Any, family: Any, questions: Sequence[Question], *,
                   shots: int = 5, cot: bool = False, data_dir=None, batch_size: int = 8,
                   max_new_tokens: int = 256, chat: bool = False,
                   progress: bool = True) -> list[GenerationPrediction]:
    """Generate an answer for each GSM8K question and score it strictly and flexibly."""
    unlabeled = [q.key for q in questions if not q.answer or "####" not in q.answer]
    if unlabeled:
        raise ValueError(f"GSM8K questions without a '####' answer: {', '.join(unlabeled[:5])}")
    texts = gsm8k_prompts(tokenizer, family, questions, shots=shots, cot=cot, data_dir=data_dir,
                          chat=chat)
    generations = generate_greedy(model, tokenizer, texts,
                                  stop_strings=gsm8k_stop_strings(tokenizer, family),
                                  max_new_tokens=max_new_tokens, batch_size=batch_size,
                                  progress=progress)
    return [score_generation(q, g) for q, g in zip(questions, generations)]
