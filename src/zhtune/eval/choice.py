"""Multiple-choice scoring: letters from next-token logits, or option texts by log-likelihood (cloze).

One forward pass per question. The few-shot prefix of a subject is run once (batch 1); the
questions of the subject then attend to its keys and values without a copy of them per question
(``zhtune.eval.shared_prefix``), their own tokens right-padded, positions continued after the prefix.
A forward pass holds at most ``batch_tokens`` question tokens (padding included), so memory
does not grow with prompt length x batch. Only the last real position's hidden state goes through
the LM head, so full-vocabulary logits are never materialised for every position.

The letter is scored as the token it is in the few-shot answers, which the style decides: lm-eval
writes ``答案： A`` / ``Answer: A`` (target delimiter one space), C-Eval's and CMMLU's own code
``答案：A``. With SentencePiece (Llama) that is ``▁A`` vs ``A``, with byte-level BPE (Qwen) ``ĠA``
vs ``A`` -- taking the wrong one silently gives near-random scores. The argmax over the four letter
logits is the argmax of lm-eval's four one-token log-likelihoods, so predictions are the same.

Cloze (``score_cloze``): each option's text after the question, scored by its summed log-likelihood
(``acc``) and that divided by its length in characters (``acc_norm``), as lm-eval's
``multiple_choice`` tasks do. The question is run once against the subject's prefix, as for
letters; its last position gives every option's first-token log-probability, and only the
options' remaining tokens go through the model again, one option at a time, attending to the
prefix and to their own question's keys and values. So a cloze question costs the letter scoring
plus its options' tokens.
"""
from __future__ import annotations

import inspect
import logging
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from zhtune.data.benchmarks import LETTERS, Question, is_multiple_choice
from zhtune.data.prompts import common_prefix_len, encode_prompt
from zhtune.data.specs import DEFAULT_STYLE
from zhtune.eval.oom import OutOfMemory, halve_after_oom
from zhtune.eval.progress import progress_bar
from zhtune.eval.shared_prefix import SharedContext, attend
from zhtune.errors import UserError

log = logging.getLogger(__name__)



@dataclass
class ChoicePrediction:
    question: Question
    pred: str
    probs: dict[str, float]  # softmax over the 4 letter logits
    used_cache: bool = True  # False: scored with the full prompt (tokenisation boundary fallback)

    @property
    def correct(self) -> bool:
        return self.pred == self.question.answer


@dataclass
class ClozePrediction:
    question: Question
    loglikelihoods: list[float]  # summed log-probability of each option's continuation tokens
    lengths: list[int]  # characters of each option's answer string: acc_norm's divisor
    used_cache: bool = True

    @property
    def pred(self) -> str:
        """The option with the highest log-likelihood (acc); ties: the earlier option."""
        return LETTERS[max(range(len(self.loglikelihoods)), key=lambda k: self.loglikelihoods[k])]

    @property
    def pred_norm(self) -> str:
        """The option with the highest log-likelihood per character (acc_norm)."""
        per_char = [ll / n if n else ll for ll, n in zip(self.loglikelihoods, self.lengths)]
        return LETTERS[max(range(len(per_char)), key=lambda k: per_char[k])]

    @property
    def correct(self) -> bool:
        return self.pred == self.question.answer

    @property
    def correct_norm(self) -> bool:
        return self.pred_norm == self.question.answer


# ----------------------------------------------------------------------------- tokens

def letter_token_ids(tokenizer, benchmark: str, style: str = DEFAULT_STYLE) -> dict[str, int]:
    """The token id of each option letter as it follows the answer cue in the few-shot answers.

    Tokenises ``cue + continuation`` (``答案： A``, ``Answer: A``, ``答案：A``) and takes the one
    token the letter adds; an error if the letter merges with the cue or needs more than one token."""
    from zhtune.data.prompts import answer_continuation, answer_prefix

    if not is_multiple_choice(benchmark):
        raise ValueError(f"{benchmark!r} is not a multiple-choice benchmark")
    cue = answer_prefix(benchmark, style)
    base = tokenizer(cue, add_special_tokens=False)["input_ids"]
    ids: dict[str, int] = {}
    for letter in LETTERS:
        continuation = answer_continuation(benchmark, letter, style)
        full = tokenizer(cue + continuation, add_special_tokens=False)["input_ids"]
        if len(full) != len(base) + 1 or full[: len(base)] != base:
            pieces = tokenizer.convert_ids_to_tokens(full)
            raise UserError(
                f"{benchmark}: the tokenizer does not add {continuation!r} after {cue!r} as one "
                f"token (got {pieces}); next-token letter scoring cannot be used with it")
        ids[letter] = full[-1]
    if len(set(ids.values())) != len(LETTERS):
        raise UserError(f"{benchmark}: option letters share a token id: {ids}")
    return ids


# ----------------------------------------------------------------------------- model parts

def _decoder_parts(model) -> tuple[Any, Any]:
    """The decoder body (embeddings + layers + final norm) and the LM head, also through PEFT."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    body = getattr(base, base.base_model_prefix, None)
    head = base.get_output_embeddings()
    if body is None or head is None:
        raise ValueError(f"{type(base).__name__} is not a causal LM with a decoder body and an LM head")
    return body, head


def _cache_kwarg(body) -> str:
    # transformers 5.2x renamed past_key_values -> cache; accept both.
    params = inspect.signature(body.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _run_body(body, input_ids, attention_mask, position_ids=None, keep_cache=False, context=None):
    """The decoder's last hidden states (and its cache); ``context``: see ``SharedContext``."""
    name = _cache_kwarg(body)
    kwargs = {"context": context} if context is not None else {}
    out = body(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
               use_cache=keep_cache, **kwargs)
    return out.last_hidden_state, (getattr(out, name) if keep_cache else None)


def _letter_probs(head, hidden_last: torch.Tensor, letter_ids: list[int]) -> torch.Tensor:
    """Softmax over the letter logits from the last positions' hidden states (B, H) -> (B, 4)."""
    logits = head(hidden_last).float()  # (B, V): one row per question, not per position
    return torch.softmax(logits[:, letter_ids], dim=-1)


def _pad_right(seqs: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids.to(device), mask.to(device)


# ----------------------------------------------------------------------------- scoring

@dataclass
class _Item:
    index: int  # position in the caller's list
    ids: list[int]  # full prompt tokens
    suffix: list[int] | None = None  # tokens after the cached prefix; None: no cache for this one


# A batch closes when one more (shorter) sequence would make more than this share of it padding:
# long-tailed question lengths otherwise waste a quarter of the compute on padding (C-Eval).
MAX_PADDING = 0.1


class _TokenBudget:
    """Tokens per forward pass (rows x the longest row, padding included), halved for the rest of
    the run when the accelerator runs out of memory. Bounding tokens rather than rows keeps memory
    flat from short 0-shot questions to MMLU's long history passages."""

    def __init__(self, tokens: int):
        self.tokens = tokens

    def rows(self, width: int) -> int:
        return max(1, self.tokens // max(width, 1))

    def run(self, chunk: list[_Item], forward, width) -> None:
        """``forward(part)`` over ``chunk`` (longest first) in parts within the budget; on OOM,
        halve the budget and retry."""
        start = 0
        while start < len(chunk):
            part = chunk[start:start + self.rows(width(chunk[start]))]
            try:
                forward(part)
            except OutOfMemory as err:
                self.tokens = halve_after_oom(err, self.tokens, len(part), "tokens")
                continue
            start += len(part)

    def run_all(self, items: list[_Item], forward, width) -> None:
        """``forward`` over ``items`` in length batches within the budget (``_length_batches``)."""
        for chunk in _length_batches(items, width, self):
            self.run(chunk, forward, width)


def _length_batches(items: list[_Item], length, budget: _TokenBudget) -> Iterator[list[_Item]]:
    """Longest first, within the token budget (read as batches close, so a budget halved on OOM
    applies at once) and little padding in each."""
    batch: list[_Item] = []
    real = 0
    for it in sorted(items, key=length, reverse=True):
        n = length(it)
        if batch and (len(batch) >= budget.rows(length(batch[0]))
                      or 1 - (real + n) / (length(batch[0]) * (len(batch) + 1)) > MAX_PADDING):
            yield batch
            batch, real = [], 0
        batch.append(it)
        real += n
    if batch:
        yield batch


def _score_full(*, body, head, items: list[_Item], letter_ids, budget: _TokenBudget, pad_id,
                device, advance):
    """Reference path: each full prompt in one forward pass, batches grouped by length."""
    out: dict[int, torch.Tensor] = {}

    def forward(chunk: list[_Item]) -> None:
        ids, mask = _pad_right([it.ids for it in chunk], pad_id, device)
        hidden, _ = _run_body(body, ids, mask)
        _collect(head, hidden, mask, chunk, letter_ids, out, advance)

    budget.run_all(items, forward, lambda it: len(it.ids))
    return out


def _collect(head, hidden, mask, chunk: list[_Item], letter_ids, out: dict, advance) -> None:
    """Letter probabilities at each right-padded sequence's last real token, into ``out``."""
    last = mask.sum(dim=1) - 1
    rows = torch.arange(len(chunk), device=hidden.device)
    for it, p in zip(chunk, _letter_probs(head, hidden[rows, last], letter_ids).cpu()):
        out[it.index] = p
    advance(len(chunk))


def _prefix_layers(body, prefix_ids: list[int], device) -> list:
    """Each layer's keys and values (1, kv heads, P, head dim) of the few-shot prefix."""
    p_ids = torch.tensor([prefix_ids], dtype=torch.long, device=device)
    _, cache = _run_body(body, p_ids, torch.ones_like(p_ids), keep_cache=True)
    return [(layer.keys, layer.values) for layer in cache.layers]


def _score_with_prefix(*, body, head, prefix_ids: list[int], items: list[_Item], letter_ids,
                       budget: _TokenBudget, pad_id, device, advance):
    """The prefix once (batch 1), then the suffixes attending to it, batches grouped by length."""
    out: dict[int, torch.Tensor] = {}
    if not items:
        return out
    context = SharedContext(prefix=_prefix_layers(body, prefix_ids, device))
    n_prefix = len(prefix_ids)

    def forward(chunk: list[_Item]) -> None:
        ids, mask = _pad_right([it.suffix for it in chunk], pad_id, device)
        positions = torch.arange(n_prefix, n_prefix + ids.shape[1], device=device)
        # The mask only marks real tokens for whoever counts them: the attention is causal and the
        # padding is at the end, where no real token sees it.
        hidden, _ = _run_body(body, ids, mask, positions.unsqueeze(0).expand(len(chunk), -1),
                              context=context)
        _collect(head, hidden, mask, chunk, letter_ids, out, advance)

    budget.run_all(items, forward, lambda it: len(it.suffix))
    return out


# The few-shot prefix's last tokens may tokenise differently alone than followed by the question:
# GPT-2-style byte-level BPE makes the prefix's closing "\n\n" one token at the end of a text but
# "\n" + "\n" before a letter. Up to this many trailing prefix tokens are left out of the cache.
BOUNDARY_SLACK = 8


def _shared_prefix(prefix_ids: list[int], items: list[_Item]) -> int:
    """How many prefix tokens every cacheable question starts with; sets those questions' suffixes.

    A question whose tokens leave the prefix more than ``BOUNDARY_SLACK`` tokens before its end
    keeps ``suffix = None`` and is scored with its full prompt."""
    lengths = {}
    for it in items:
        common = min(common_prefix_len([prefix_ids, it.ids]), len(it.ids) - 1)  # leave >= 1 suffix token
        if common >= max(1, len(prefix_ids) - BOUNDARY_SLACK):
            lengths[it.index] = common
    n = min(lengths.values(), default=0)
    for it in items:
        if it.index in lengths:
            it.suffix = it.ids[n:]
    return n


def _subject_prompts(tokenizer, family, benchmark, subject, questions, shots, data_dir, chat,
                     style=DEFAULT_STYLE, formulation="letter"):
    """(prefix text shared by the subject's questions, full prompt text per question).

    The prefix is None when it cannot be located in the (chat-wrapped) prompts."""
    from zhtune.data.benchmarks import few_shot_examples
    from zhtune.data.prompts import choice_item, choice_prefix, wrap_chat

    examples = few_shot_examples(benchmark, subject, shots, data_dir=data_dir) if shots else []
    prefix = choice_prefix(benchmark, subject, examples, style, formulation)
    texts = [prefix + choice_item(benchmark, q, False, style, formulation) for q in questions]
    if not chat:
        return prefix, texts
    texts = [wrap_chat(tokenizer, family, t) for t in texts]
    # The chat template puts the few-shot prompt inside the user turn: the shared head of every
    # prompt is everything up to the end of the few-shot prefix.
    pos = texts[0].find(prefix) if prefix else -1
    if pos < 0:
        return None, texts
    head = texts[0][: pos + len(prefix)]
    return (head if all(t.startswith(head) for t in texts) else None), texts


def _scoring_setup(model, tokenizer, family, chat: bool):
    """What letter and cloze scoring both need: the family (for chat prompts), the decoder body and
    head run separately, the device and the padding id."""
    if chat and family is None:
        from zhtune.models.families import detect_family

        family = detect_family(model.config, tokenizer)
    body, head = _decoder_parts(model)
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return family, body, head, device, pad_id


def score_choice(model, tokenizer, questions: list[Question], *, shots: int = 5, data_dir=None,
                 batch_tokens: int = 4096, chat: bool = False, family=None, use_cache: bool = True,
                 progress: bool = True, style: str = DEFAULT_STYLE) -> list[ChoicePrediction]:
    """Predict the option letter of each question, in the order given.

    ``use_cache=False`` scores every full prompt on its own (the reference the cached path must
    reproduce). Questions whose prompt does not start with the subject's few-shot prefix tokens
    (see ``BOUNDARY_SLACK``) are scored that way too; the count is logged and visible as
    ``ChoicePrediction.used_cache``."""
    if not questions:
        return []
    family, body, head, device, pad_id = _scoring_setup(model, tokenizer, family, chat)
    max_positions = getattr(model.config, "max_position_embeddings", None)

    groups: dict[tuple[str, str], list[int]] = {}
    for i, q in enumerate(questions):
        if not is_multiple_choice(q.benchmark):
            raise ValueError(f"{q.key}: not a multiple-choice question")
        groups.setdefault((q.benchmark, q.subject), []).append(i)
    letters = {b: [letter_token_ids(tokenizer, b, style)[x] for x in LETTERS]
               for b in {b for b, _ in groups}}

    run = dict(body=body, head=head, budget=_TokenBudget(batch_tokens), pad_id=pad_id, device=device)
    probs: dict[int, torch.Tensor] = {}
    fallback: dict[str, list[_Item]] = defaultdict(list)  # per benchmark: scored with full prompts
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), attend(body), \
                progress_bar(len(questions), "multiple choice", progress) as advance:
            for (benchmark, subject), indices in groups.items():
                head_text, texts = _subject_prompts(tokenizer, family, benchmark, subject,
                                                    [questions[i] for i in indices], shots, data_dir,
                                                    chat, style)
                items = [_Item(i, encode_prompt(tokenizer, t)) for i, t in zip(indices, texts)]
                longest = max(len(it.ids) for it in items)
                if max_positions and longest > max_positions:
                    log.warning("%s/%s: a prompt of %d tokens is longer than the model's %d "
                                "positions; its scores are unreliable (use fewer shots)",
                                benchmark, subject, longest, max_positions)
                if use_cache and head_text is not None:
                    prefix_ids = encode_prompt(tokenizer, head_text)
                    n = _shared_prefix(prefix_ids, items)
                    cached = [it for it in items if it.suffix is not None]
                    probs.update(_score_with_prefix(prefix_ids=prefix_ids[:n],
                                                    items=cached, letter_ids=letters[benchmark],
                                                    advance=advance, **run))
                fallback[benchmark].extend(it for it in items if it.suffix is None)
            for benchmark, rest in fallback.items():
                probs.update(_score_full(items=rest, letter_ids=letters[benchmark], advance=advance, **run))
    finally:
        if was_training:
            model.train()

    uncached = {it.index for rest in fallback.values() for it in rest}
    if use_cache and uncached:
        log.warning("%d of %d question(s) did not tokenise as few-shot prefix + question; scored "
                    "with the full prompt instead", len(uncached), len(questions))
    results = []
    for i, q in enumerate(questions):
        p = probs[i].tolist()
        best = max(range(len(LETTERS)), key=lambda k: p[k])  # ties: the earlier letter
        results.append(ChoicePrediction(q, LETTERS[best], dict(zip(LETTERS, p)), i not in uncached))
    return results


# ----------------------------------------------------------------------------- cloze

@dataclass
class _ClozeItem(_Item):
    conts: list[list[int]] | None = None  # continuation tokens of each option


def continuation_tokens(tokenizer, item_text: str, continuation: str) -> list[int]:
    """The tokens a continuation adds after a context, as lm-eval splits them: the tokens of
    ``context + continuation`` past the context's own tokens. Tokenised on the question alone (the
    few-shot prefix cannot change how the end of the question tokenises), which keeps it cheap."""
    ctx = tokenizer(item_text, add_special_tokens=False)["input_ids"]
    whole = tokenizer(item_text + continuation, add_special_tokens=False)["input_ids"]
    return whole[len(ctx):]


def _cloze_forward(*, body, head, prefix_layers, n_prefix: int, chunk: list[_ClozeItem], pad_id,
                   device, out: dict, advance) -> None:
    """Log-likelihoods of the four options of each question in ``chunk``.

    1. The questions (right-padded) attending to the prefix: the last real position gives each
       option's first-token log-probability; each layer's question keys and values are kept.
    2. For each option k, its remaining tokens attending to the prefix and to their own question
       (its padding masked), positions continuing after each question's own length."""
    b = len(chunk)
    ids, mask = _pad_right([it.suffix for it in chunk], pad_id, device)
    lengths = mask.sum(dim=1)
    positions = torch.arange(n_prefix, n_prefix + ids.shape[1], device=device).unsqueeze(0).expand(b, -1)
    question = SharedContext(prefix=prefix_layers, keep=[])
    hidden, _ = _run_body(body, ids, mask, positions, context=question)
    rows = torch.arange(b, device=hidden.device)
    first = torch.log_softmax(head(hidden[rows, lengths - 1]).float(), dim=-1)  # (B, V)
    del hidden
    options = SharedContext(prefix=prefix_layers, rows=question.keep, rows_mask=mask.bool())
    lls = torch.zeros((b, len(LETTERS)), dtype=torch.float64)
    for k in range(len(LETTERS)):
        for i, it in enumerate(chunk):
            if it.conts[k]:
                lls[i, k] = float(first[i, it.conts[k][0]])
        rest = [it.conts[k][:-1] for it in chunk]  # inputs whose outputs predict tokens 2..n
        if max(len(r) for r in rest) == 0:
            continue
        c_ids, c_mask = _pad_right([r or [pad_id] for r in rest], pad_id, device)
        for i, r in enumerate(rest):
            if not r:
                c_mask[i, 0] = 0
        c_pos = (n_prefix + lengths).unsqueeze(1) + torch.arange(c_ids.shape[1], device=device)
        hidden, _ = _run_body(body, c_ids, c_mask, c_pos, context=options)
        logp = torch.log_softmax(head(hidden[c_mask.bool()]).float(), dim=-1)  # (real positions, V)
        targets = torch.tensor([t for it in chunk for t in it.conts[k][1:]], dtype=torch.long,
                               device=logp.device)
        picked = logp.gather(1, targets.unsqueeze(1)).squeeze(1).double().cpu()
        counts = [max(len(it.conts[k]) - 1, 0) for it in chunk]
        for i, part in enumerate(torch.split(picked, counts)):
            lls[i, k] += part.sum()
    for it, row in zip(chunk, lls):
        out[it.index] = row.tolist()
    advance(len(chunk))


def _score_cloze_group(*, body, head, prefix_ids: list[int] | None, items: list[_ClozeItem],
                       budget: _TokenBudget, pad_id, device, advance) -> dict[int, list[float]]:
    out: dict[int, list[float]] = {}
    if not items:
        return out
    prefix_layers = _prefix_layers(body, prefix_ids, device) if prefix_ids else None

    def forward(chunk: list[_ClozeItem]) -> None:
        _cloze_forward(body=body, head=head, prefix_layers=prefix_layers,
                       n_prefix=len(prefix_ids or []), chunk=chunk, pad_id=pad_id, device=device,
                       out=out, advance=advance)

    budget.run_all(items, forward, lambda it: len(it.suffix) + max(len(c) for c in it.conts))
    return out


def score_cloze(model, tokenizer, questions: list[Question], *, shots: int = 5, data_dir=None,
                batch_tokens: int = 4096, chat: bool = False, family=None, use_cache: bool = True,
                progress: bool = True, style: str = DEFAULT_STYLE) -> list[ClozePrediction]:
    """Each option's text scored by log-likelihood after the question (the cloze formulation).

    ``use_cache=False`` scores every full prompt on its own (the reference for the cached path)."""
    from zhtune.data.prompts import choice_item, choice_strings, continuations

    if not questions:
        return []
    family, body, head, device, pad_id = _scoring_setup(model, tokenizer, family, chat)
    groups: dict[tuple[str, str], list[int]] = {}
    for i, q in enumerate(questions):
        if not is_multiple_choice(q.benchmark):
            raise ValueError(f"{q.key}: not a multiple-choice question")
        groups.setdefault((q.benchmark, q.subject), []).append(i)

    run = dict(body=body, head=head, budget=_TokenBudget(batch_tokens), pad_id=pad_id, device=device)
    lls: dict[int, list[float]] = {}
    fallback: list[_ClozeItem] = []
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), attend(body), progress_bar(len(questions), "cloze", progress) as advance:
            for (benchmark, subject), indices in groups.items():
                qs = [questions[i] for i in indices]
                head_text, texts = _subject_prompts(tokenizer, family, benchmark, subject, qs, shots,
                                                    data_dir, chat, style, "cloze")
                items = []
                for i, q, text in zip(indices, qs, texts):
                    item_text = choice_item(benchmark, q, False, style, "cloze")
                    conts = [continuation_tokens(tokenizer, item_text, c)
                             for c in continuations(benchmark, q, style, "cloze")]
                    items.append(_ClozeItem(i, encode_prompt(tokenizer, text), conts=conts))
                if use_cache and head_text is not None:
                    prefix_ids = encode_prompt(tokenizer, head_text)
                    n = _shared_prefix(prefix_ids, items)
                    lls.update(_score_cloze_group(prefix_ids=prefix_ids[:n], advance=advance,
                                                  items=[it for it in items if it.suffix is not None],
                                                  **run))
                fallback.extend(it for it in items if it.suffix is None)
            for it in fallback:
                it.suffix = it.ids  # the whole prompt, no prefix cache
            lls.update(_score_cloze_group(prefix_ids=None, items=fallback, advance=advance, **run))
    finally:
        if was_training:
            model.train()
    if use_cache and fallback:
        log.warning("%d of %d cloze question(s) did not tokenise as few-shot prefix + question; "
                    "scored with the full prompt instead", len(fallback), len(questions))
    uncached = {it.index for it in fallback}
    return [ClozePrediction(q, lls[i], [len(c) for c in choice_strings(q.benchmark, q, style, "cloze")],
                            i not in uncached)
            for i, q in enumerate(questions)]
