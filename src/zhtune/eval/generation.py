"""Generation benchmarks (GSM8K): greedy generation with per-sequence stop strings, and answer extraction.

Generation is our own small greedy loop over ``model.forward`` rather than ``model.generate``,
because we want what ``generate`` does not do:

* continuous batching: a sequence that hits a stop string leaves the batch (its rows are dropped
  from the KV cache) and the next prompt takes its place, so one rambling answer does not keep the
  others computing until ``max_new_tokens``; on a CPU a decoding step costs about the same for one
  sequence as for eight, so keeping the batch full is what makes GSM8K affordable;
* a few-shot prefix that every prompt shares is run once and its KV cache reused for every
  prompt (the prompts are tokenised whole and their longest common token prefix is what is
  shared, so the model sees exactly the tokens of the unshared prompt). lm-eval's GSM8K gives each
  question its own random shots, so there little is shared; the chain-of-thought prompts share all.

Prompts are left-padded (joining prompts are padded between the shared prefix and their own
tokens), and position ids skip the padding, so every sequence is computed as it would be alone:
batched greedy output equals one-by-one greedy output and ``model.generate`` (tested).

A generation benchmark is prompted, stopped and scored as its spec says (GSM8K:
``resources/benchmarks/gsm8k.yaml``, lm-eval 0.4.13's ``gsm8k`` task): per-question seeded shots, the
``until`` stops plus the tokenizer's EOS, lm-eval's two regex filters and its ``exact_match``
(``zhtune.eval.answer_filters``).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import torch

from zhtune.data.benchmarks import Question
from zhtune.data.prompts import common_prefix_len, encode_prompt
from zhtune.data.specs import DEFAULT_STYLE
from zhtune.eval.oom import OutOfMemory, halve_after_oom
from zhtune.eval.progress import progress_bar

# Shortest shared prefix (in tokens) worth a separate forward pass.
MIN_SHARED_PREFIX = 16
# Compact the KV cache once this many columns are padding no running sequence uses.
COMPACT_MIN_COLUMNS = 64


@dataclass
class GenerationPrediction:
    question: Question
    generation: str  # the model's text (special tokens removed), cut at the first stop string
    extracted_strict: str  # lm-eval's 'strict-match' filter output ('[invalid]': no match)
    extracted_flexible: str  # lm-eval's 'flexible-extract' filter output
    gold: str  # the reference as exact_match compares it (GSM8K: the final number)
    correct_strict: bool
    correct: bool  # flexible match: what "accuracy" means for GSM8K in summary.json


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

    As lm-eval's HF backend at batch size 1: a sequence ends at an EOS token, after
    ``max_new_tokens``, or once a stop string appears in its text with special tokens kept (so a
    special ``<|im_end|>`` stops it); the result is its text decoded without special tokens, cut
    at the first stop string.

    Up to ``batch_size`` sequences run together, longest prompts first. A sequence that finishes
    leaves the batch at once and the next prompt takes its place (continuous batching), so one long
    answer does not hold up the others. The longest token prefix shared by all prompts (the
    few-shot examples) is computed once and its KV cache reused (``share_prefix=False``: not).
    Out of memory, the batch is halved for the rest of the call (``zhtune.eval.oom``).
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
    finished: set[int] = set()
    running: _Running | None = None
    refill = True
    try:
        with progress_bar(len(prompts), "generating", progress) as advance, torch.inference_mode():
            prefix_cache = _prefix_cache(model, encoded[0][:prefix_len], device) if prefix_len else None
            while pending or running is not None:
                take: list[int] = []
                try:
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
                        raw = tokenizer.decode(generated, skip_special_tokens=False)
                        if done or len(generated) >= max_new_tokens or any(s in raw for s in stops):
                            text = tokenizer.decode(generated, skip_special_tokens=True)
                            results[running.index[row]] = cut_at_stop(text, stops)
                            finished.add(running.index[row])
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
                except OutOfMemory as err:
                    # The sequences in flight start again (greedy: the same text) in smaller
                    # batches, and the smaller batch is kept (eval.oom: the scorer's rule).
                    in_flight = set(running.index if running is not None else []) | set(take)
                    back = sorted(in_flight - finished)
                    running = None
                    batch_size = halve_after_oom(err, batch_size, len(back), "sequences")
                    pending = sorted(pending + back, key=lambda i: len(encoded[i]))
    finally:
        model.train(was_training)
    return results


# ----------------------------------------------------------------------------- generation benchmarks

def _generation_spec(benchmark: str):
    from zhtune.data.specs import load_spec

    spec = load_spec(benchmark)
    if spec.kind != "generation" or spec.generation is None:
        raise ValueError(f"{benchmark} is not a generation benchmark (its spec's kind is {spec.kind})")
    return spec


def generation_prompts(tokenizer: Any, family: Any, questions: Sequence[Question], *, shots: int = 5,
                       cot: bool = False, data_dir=None, chat: bool = False,
                       style: str = DEFAULT_STYLE) -> list[str]:
    """One prompt per question: its solved shots (``generation_exemplars``; with ``cot`` the spec's
    chain-of-thought exemplars), then the item (GSM8K: ``Question: {q}\\nAnswer:``); in the chat
    template when ``chat``."""
    from zhtune.data.prompts import generation_exemplars, generation_item, generation_prefix, wrap_chat

    if not questions:
        return []
    benchmark = questions[0].benchmark
    if cot:
        prefix = generation_prefix(benchmark, [], cot=True, style=style)
        texts = [prefix + generation_item(q, style) for q in questions]
    else:
        shots_of = generation_exemplars(questions, shots, style, data_dir=data_dir)
        texts = [generation_prefix(benchmark, s, style=style) + generation_item(q, style)
                 for q, s in zip(questions, shots_of)]
    if chat:
        texts = [wrap_chat(tokenizer, family, t) for t in texts]
    return texts


def generation_stops(benchmark: str, tokenizer: Any, family: Any = None, chat: bool = False) -> list[str]:
    """The spec's ``until`` (GSM8K: 'Question:', '</s>', '<|im_end|>') and the tokenizer's EOS as
    text, as lm-eval stops; in a chat template (``chat``) also the family's turn-end stops."""
    from zhtune.models.families import stop_strings

    stops = list(_generation_spec(benchmark).generation.until)
    eos_id = getattr(tokenizer, "eos_token_id", None)
    if eos_id is not None:  # lm-eval adds decode([eos]) with special tokens kept
        stops.append(tokenizer.decode([eos_id], skip_special_tokens=False))
    if chat and family is not None:
        stops += stop_strings(tokenizer, family)
    return list(dict.fromkeys(s for s in stops if s))


def score_generation(question: Question, generation: str, *, cot: bool = False,
                     style: str = DEFAULT_STYLE) -> GenerationPrediction:
    """Both filters of the question's spec, each judged by its ``exact_match`` against the reference."""
    from zhtune.data.prompts import generation_target
    from zhtune.eval.answer_filters import exact_match, normalize_for_match, regex_filter

    rules = _generation_spec(question.benchmark).generation
    strict_rule = rules.cot_strict if cot and rules.cot_strict else rules.strict
    strict = regex_filter(generation, strict_rule.regex, strict_rule.group_select, strict_rule.fallback)
    flexible = regex_filter(generation, rules.flexible.regex, rules.flexible.group_select,
                            rules.flexible.fallback)
    reference = generation_target(question, style)
    options = rules.exact_match.model_dump()
    return GenerationPrediction(question=question, generation=generation, extracted_strict=strict,
                                extracted_flexible=flexible,
                                gold=normalize_for_match(reference, **options),
                                correct_strict=exact_match(strict, reference, **options),
                                correct=exact_match(flexible, reference, **options))


def evaluate_generation(model: Any, tokenizer: Any, family: Any, questions: Sequence[Question], *,
                        shots: int = 5, cot: bool = False, data_dir=None, batch_size: int = 8,
                        max_new_tokens: int = 256, chat: bool = False, style: str = DEFAULT_STYLE,
                        progress: bool = True) -> list[GenerationPrediction]:
    """Generate an answer for each question of one generation benchmark and score it strictly and
    flexibly, as its spec says."""
    if not questions:
        return []
    unlabeled = [q.key for q in questions if not q.answer]
    if unlabeled:
        raise ValueError(f"questions without a solution: {', '.join(unlabeled[:5])}")
    texts = generation_prompts(tokenizer, family, questions, shots=shots, cot=cot, data_dir=data_dir,
                               chat=chat, style=style)
    stops = generation_stops(questions[0].benchmark, tokenizer, family, chat)
    generations = generate_greedy(model, tokenizer, texts, stop_strings=stops,
                                  max_new_tokens=max_new_tokens, batch_size=batch_size,
                                  progress=progress)
    return [score_generation(q, g, cot=cot, style=style) for q, g in zip(questions, generations)]
