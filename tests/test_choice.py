"""Multiple-choice scoring: letter tokens, shared few-shot KV cache == full prompts, batching."""
from __future__ import annotations

import pytest
import torch

from zhtune.data.benchmarks import LETTERS, load_benchmark
from zhtune.data.prompts import encode_prompt
from zhtune.eval import choice
from zhtune.eval.choice import letter_token_ids, score_choice
from zhtune.models.families import detect_family
from zhtune.models.loading import load_tokenizer

SUBJECTS = {"ceval": ["computer_network", "high_school_physics"],
            "mmlu": ["abstract_algebra", "astronomy"]}


def load_sharp(path):
    """The tiny model with larger random weights: its letter probabilities differ clearly between
    questions (the default 0.02 init makes every prediction the same letter)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 1.0 / p.shape[1] ** 0.5)
    return model.eval(), load_tokenizer(path)


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def tiny(request, tiny_llama_dir, tiny_qwen_dir):
    path = tiny_llama_dir if request.param == "llama" else tiny_qwen_dir
    model, tok = load_sharp(path)
    return request.param, model, tok, detect_family(model.config, tok)


def questions(data_dir, per_subject=3):
    out = []
    for b, subjects in SUBJECTS.items():
        for s in subjects:
            out += load_benchmark(b, data_dir=data_dir, subjects=[s])[:per_subject]
    return out


def test_letter_tokens_llama(tiny_llama_dir):
    tok = load_tokenizer(tiny_llama_dir)

    def tokens(b):
        return tok.convert_ids_to_tokens(list(letter_token_ids(tok, b).values()))

    assert tokens("ceval") == ["▁A", "▁B", "▁C", "▁D"]  # lm-eval: 答案： A -- SentencePiece space marker
    assert tokens("cmmlu") == ["▁A", "▁B", "▁C", "▁D"]
    assert tokens("mmlu") == ["▁A", "▁B", "▁C", "▁D"]  # Answer: A
    official = tok.convert_ids_to_tokens(list(letter_token_ids(tok, "ceval", "official").values()))
    assert official == ["A", "B", "C", "D"]  # C-Eval's own code: 答案：A -- no word-start marker


def test_letter_tokens_qwen(tiny_qwen_dir):
    tok = load_tokenizer(tiny_qwen_dir)

    def tokens(b):
        return tok.convert_ids_to_tokens(list(letter_token_ids(tok, b).values()))

    assert tokens("ceval") == ["ĠA", "ĠB", "ĠC", "ĠD"]  # byte-level BPE space marker
    assert tokens("mmlu") == ["ĠA", "ĠB", "ĠC", "ĠD"]
    official = tok.convert_ids_to_tokens(list(letter_token_ids(tok, "cmmlu", "official").values()))
    assert official == ["A", "B", "C", "D"]  # 答案是：A


def test_letter_token_that_merges_is_an_error(tiny_qwen_dir, monkeypatch):
    from zhtune.data import prompts
    from zhtune.errors import UserError

    tok = load_tokenizer(tiny_qwen_dir)
    monkeypatch.setattr(prompts, "answer_continuation", lambda b, letter, style=None: f" {letter}{letter}xyz")
    with pytest.raises(UserError, match="as one token"):
        letter_token_ids(tok, "mmlu")


@pytest.mark.parametrize("chat", [False, True])
@pytest.mark.parametrize("shots", [0, 2])
def test_cached_equals_uncached(tiny, shared_data, shots, chat):
    _, model, tok, family = tiny
    qs = questions(shared_data)
    cached = score_choice(model, tok, qs, shots=shots, data_dir=shared_data, batch_tokens=300,
                          chat=chat, family=family, progress=False)
    full = score_choice(model, tok, qs, shots=shots, data_dir=shared_data, batch_tokens=300,
                        chat=chat, family=family, use_cache=False, progress=False)
    assert all(p.used_cache for p in cached), "prefix cache not used"
    assert not any(p.used_cache for p in full)
    assert [p.question for p in cached] == qs
    assert [p.pred for p in cached] == [p.pred for p in full]
    for a, b in zip(cached, full):
        assert sum(a.probs.values()) == pytest.approx(1.0, abs=1e-5)
        for x in LETTERS:
            assert a.probs[x] == pytest.approx(b.probs[x], abs=1e-5)
    assert len({p.pred for p in cached}) > 1, "sharpened model should not answer one letter only"


def test_matches_plain_forward(tiny, shared_data):
    """Reference: the whole prompt through model(...), the letter logits at the last position."""
    from zhtune.data.benchmarks import few_shot_examples
    from zhtune.data.prompts import choice_prompt

    _, model, tok, _ = tiny
    qs = questions(shared_data, per_subject=2)
    preds = score_choice(model, tok, qs, shots=1, data_dir=shared_data, batch_tokens=400, progress=False)
    for q, p in zip(qs, preds):
        text = choice_prompt(q.benchmark, q.subject, few_shot_examples(q.benchmark, q.subject, 1, shared_data), q)
        ids = torch.tensor([tok(text)["input_ids"]])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, -1]
        letter_ids = letter_token_ids(tok, q.benchmark)
        ref = torch.softmax(logits[[letter_ids[x] for x in LETTERS]], dim=-1)
        assert p.pred == LETTERS[int(ref.argmax())]
        assert [p.probs[x] for x in LETTERS] == pytest.approx(ref.tolist(), abs=1e-5)


def test_batch_grouping_restores_order(tiny, shared_data):
    _, model, tok, _ = tiny
    qs = questions(shared_data, per_subject=5)
    qs = qs[::-1]  # an order the length sort must undo
    one = score_choice(model, tok, qs, shots=0, data_dir=shared_data, batch_tokens=1, progress=False)
    many = score_choice(model, tok, qs, shots=0, data_dir=shared_data, batch_tokens=400, progress=False)
    assert [p.question for p in many] == qs
    for a, b in zip(one, many):
        assert [a.probs[x] for x in LETTERS] == pytest.approx([b.probs[x] for x in LETTERS], abs=1e-5)


def _patched_prompts(monkeypatch, change):
    real = choice._subject_prompts

    def patched(*args):
        head, texts = real(*args)
        return change(head, texts)

    monkeypatch.setattr(choice, "_subject_prompts", patched)


def _assert_same(cached, full):
    for a, b in zip(cached, full):
        assert a.pred == b.pred
        assert a.probs == pytest.approx(b.probs, abs=1e-6)


def test_tokenisation_boundary_shortens_the_prefix(tiny_llama_dir, shared_data, monkeypatch):
    """A prefix whose last token merges with the question's first characters (here a trailing
    space: "▁" alone, "▁Question" in context) is cached without its last token(s)."""
    model, tok = load_sharp(tiny_llama_dir)
    _patched_prompts(monkeypatch, lambda head, texts: (head + " ", [head + " " + t[len(head):] for t in texts]))
    qs = questions(shared_data, per_subject=2)
    head = choice._subject_prompts(tok, None, "mmlu", "astronomy", qs[-2:], 1, shared_data, False)[0]
    items = [choice._Item(i, encode_prompt(tok, t)) for i, t in enumerate(
        choice._subject_prompts(tok, None, "mmlu", "astronomy", qs[-2:], 1, shared_data, False)[1])]
    prefix_ids = encode_prompt(tok, head)
    assert items[0].ids[: len(prefix_ids)] != prefix_ids  # the boundary really differs
    assert choice._shared_prefix(prefix_ids, items) == len(prefix_ids) - 1
    cached = score_choice(model, tok, qs, shots=1, data_dir=shared_data, progress=False)
    full = score_choice(model, tok, qs, shots=1, data_dir=shared_data, use_cache=False, progress=False)
    assert all(p.used_cache for p in cached)
    _assert_same(cached, full)


def test_fallback_is_counted(tiny_llama_dir, shared_data, monkeypatch, caplog):
    """Questions that do not start with the prefix tokens are scored with the full prompt."""
    model, tok = load_sharp(tiny_llama_dir)
    _patched_prompts(monkeypatch, lambda head, texts: ("完全不同的开头。" + head, texts))
    qs = questions(shared_data, per_subject=2)
    cached = score_choice(model, tok, qs, shots=1, data_dir=shared_data, progress=False)
    full = score_choice(model, tok, qs, shots=1, data_dir=shared_data, use_cache=False, progress=False)
    assert not any(p.used_cache for p in cached)
    assert f"{len(qs)} of {len(qs)} question(s) did not tokenise" in caplog.text
    _assert_same(cached, full)


def test_model_mode_restored(tiny_qwen_dir, shared_data):
    model, tok = load_sharp(tiny_qwen_dir)
    model.train()
    score_choice(model, tok, questions(shared_data, 1), shots=0, data_dir=shared_data, progress=False)
    assert model.training


def test_empty_and_not_multiple_choice(tiny_qwen_dir, shared_data):
    model, tok = load_sharp(tiny_qwen_dir)
    assert score_choice(model, tok, [], progress=False) == []
    gsm = load_benchmark("gsm8k", data_dir=shared_data)[:1]
    with pytest.raises(ValueError, match="not a multiple-choice"):
        score_choice(model, tok, gsm, progress=False)


def test_length_batches_bound_padding():
    lengths = [619, 541, 443, 392, 369, 356, 335, 333, 323, 284, 266, 231, 228, 214, 203, 201, 194,
               180, 151, 134, 123, 122, 116, 105, 101, 81]  # C-Eval accountant suffixes (SmolLM2)
    items = [choice._Item(i, [0] * n) for i, n in enumerate(lengths[::-1])]
    batches = list(choice._length_batches(items, lambda it: len(it.ids), choice._TokenBudget(1024)))
    assert sorted(it.index for b in batches for it in b) == list(range(len(lengths)))
    assert all(len(b) * len(b[0].ids) <= 1024 for b in batches)  # padded tokens within the budget
    tight = list(choice._length_batches(items, lambda it: len(it.ids), choice._TokenBudget(500)))
    assert len(tight[0]) == 1 and len(tight[0][0].ids) == 619  # longer than the budget: alone
    real = sum(lengths)
    padded = sum(len(b) * len(b[0].ids) for b in batches)
    assert 1 - real / padded <= choice.MAX_PADDING  # plain chunks of 8 waste 28% here
    for b in batches:
        assert [len(it.ids) for it in b] == sorted((len(it.ids) for it in b), reverse=True)


@pytest.mark.parametrize("use_cache", [True, False])
def test_out_of_memory_halves_the_token_budget(tiny, shared_data, monkeypatch, caplog, use_cache):
    """A batch that does not fit is split and retried; the scores are those of a run that fits."""
    _, model, tok, family = tiny
    qs = questions(shared_data, per_subject=10)
    real_run_body, seen = choice._run_body, []

    def measured(body, input_ids, *args, **kwargs):
        seen.append(input_ids.numel() if input_ids.shape[0] > 1 else 0)
        return real_run_body(body, input_ids, *args, **kwargs)

    monkeypatch.setattr(choice, "_run_body", measured)
    expected = score_choice(model, tok, qs, shots=1, data_dir=shared_data, batch_tokens=2000,
                            use_cache=use_cache, progress=False)
    fits = max(seen) * 2 // 3  # tokens the simulated accelerator holds in one pass (the prefix: any)
    seen.clear()

    def small_accelerator(body, input_ids, *args, **kwargs):
        if input_ids.shape[0] > 1 and input_ids.numel() > fits:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        seen.append(input_ids.shape[0])
        return real_run_body(body, input_ids, *args, **kwargs)

    monkeypatch.setattr(choice, "_run_body", small_accelerator)
    with caplog.at_level("WARNING", logger="zhtune.eval.choice"):
        got = score_choice(model, tok, qs, shots=1, data_dir=shared_data, batch_tokens=2000,
                           use_cache=use_cache, progress=False)
    assert [p.pred for p in got] == [p.pred for p in expected]
    for a, b in zip(got, expected):
        for x in LETTERS:
            assert a.probs[x] == pytest.approx(b.probs[x], abs=1e-5)
    assert max(seen) > 1 and sum(seen) >= len(qs)
    # halved until it fits: each budget fails at most once, later batches start at the reduced one
    budgets = [int(r.getMessage().split()[-2]) for r in caplog.records if "out of memory" in r.getMessage()]
    assert budgets and budgets == sorted(set(budgets), reverse=True), budgets
    assert budgets[0] == 1000 and budgets[-1] >= fits // 2


def test_out_of_memory_with_one_question_is_raised():
    budget = choice._TokenBudget(4)

    def forward(part):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    with pytest.raises(torch.OutOfMemoryError):
        budget.run([choice._Item(i, [1]) for i in range(4)], forward, lambda it: len(it.ids))
    assert budget.tokens == 1


# ----------------------------------------------------------------------------- cloze

@pytest.mark.parametrize("chat", [False, True])
@pytest.mark.parametrize("shots", [0, 2])
def test_cloze_cached_equals_uncached(tiny, shared_data, shots, chat):
    _, model, tok, family = tiny
    qs = questions(shared_data, per_subject=2)
    cached = choice.score_cloze(model, tok, qs, shots=shots, data_dir=shared_data, batch_tokens=300,
                                chat=chat, family=family, progress=False)
    full = choice.score_cloze(model, tok, qs, shots=shots, data_dir=shared_data, batch_tokens=300,
                              chat=chat, family=family, use_cache=False, progress=False)
    assert all(p.used_cache for p in cached) and not any(p.used_cache for p in full)
    for a, b in zip(cached, full):
        assert a.loglikelihoods == pytest.approx(b.loglikelihoods, abs=1e-3)
        assert all(ll < 0 for ll in a.loglikelihoods)
    assert [p.pred_norm for p in cached] == [p.pred_norm for p in full]


def test_cloze_matches_plain_forward(tiny, shared_data):
    """Reference: each full context + option text through model(...), summing the option tokens'
    log-probabilities; acc_norm divides by the option's characters."""
    from zhtune.data.benchmarks import few_shot_examples
    from zhtune.data.prompts import choice_prompt, continuations

    _, model, tok, _ = tiny
    qs = questions(shared_data, per_subject=1)
    preds = choice.score_cloze(model, tok, qs, shots=1, data_dir=shared_data, batch_tokens=200, progress=False)
    for q, p in zip(qs, preds):
        context = choice_prompt(q.benchmark, q.subject, few_shot_examples(q.benchmark, q.subject, 1, shared_data),
                                q, formulation="cloze")
        ctx = tok(context)["input_ids"]
        ref = []
        for cont in continuations(q.benchmark, q, formulation="cloze"):
            whole = tok(context + cont)["input_ids"]
            ids = torch.tensor([ctx + whole[len(ctx):]])
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
            ref.append(sum(float(logp[i - 1, ids[0, i]]) for i in range(len(ctx), ids.shape[1])))
        assert p.loglikelihoods == pytest.approx(ref, abs=1e-3)
        assert p.lengths == [len(c) for c in q.choices]  # option texts; no target delimiter
        norm = [ll / n for ll, n in zip(ref, p.lengths)]
        assert p.pred_norm == LETTERS[norm.index(max(norm))]
        assert p.pred == LETTERS[ref.index(max(ref))]
