"""GSM8K generation: answer extraction, stop strings, and batched greedy == one-by-one greedy."""
from __future__ import annotations

import pytest
import torch

from zhtune.data.benchmarks import Question
from zhtune.eval import generation as G
from zhtune.eval.generation import (cut_at_stop, extract_flexible, extract_strict, generate_greedy,
                                    gsm8k_gold, normalize_number, score_generation)


# ----------------------------------------------------------------------------- numbers

@pytest.mark.parametrize("raw, want", [
    ("1,234", "1234"), ("$1,234.50", "1234.5"), ("72.0", "72"), ("72", "72"), ("72.", "72"),
    ("+5", "5"), ("-3", "-3"), ("-$5", "-5"), ("$ 18", "18"), ("0.50", "0.5"), (".5", "0.5"),
    ("-0", "0"), ("1,000,000", "1000000"), (" 42 ", "42"), ("abc", "abc"),
])
def test_normalize_number(raw, want):
    assert normalize_number(raw) == want


def test_gsm8k_gold():
    assert gsm8k_gold("Natalia sold 48/2 = <<48/2=24>>24 clips.\n#### 72") == "72"
    assert gsm8k_gold("a\n#### 1,234") == "1234"
    assert gsm8k_gold("#### -3") == "-3"
    assert gsm8k_gold("x #### 5 #### 6") == "6"  # the last '####'
    with pytest.raises(ValueError):
        gsm8k_gold("no final answer marker 12")


@pytest.mark.parametrize("text, want", [
    (" She makes 16 - 3 - 4 = 9 eggs.\n#### 18\n\n", "18"),
    ("#### $1,234.00", "1234"),
    ("####-3", "-3"),
    ("So 5 + 4 = 9. The answer is 9.", "9"),  # chain-of-thought format
    ("The answer is $1,000.", "1000"),
    ("#### 7 and later #### 8", "7"),  # the first one: the model's own answer
    ("I think it is 72", None),  # a number, but no marker
    ("no number at all", None),
    ("", None),
])
def test_extract_strict(text, want):
    assert extract_strict(text) == want


@pytest.mark.parametrize("text, want", [
    ("I have 3 apples and 4 pears, so 7 fruits.", "7"),  # several numbers: the last
    ("It costs $1,234.50 in total.", "1234.5"),
    ("The temperature fell to -3 degrees", "-3"),
    ("48/2 = <<48/2=24>>24 clips", "24"),
    ("half is 0.5", "0.5"),
    ("The answer is 72.0.", "72"),
    ("#### 1,000\n\n", "1000"),
    ("no number at all", None),
    ("", None),
])
def test_extract_flexible(text, want):
    assert extract_flexible(text) == want


def _gsm8k_question(answer="He had 2 + 3 = 5.\n#### 5") -> Question:
    return Question("gsm8k", "main", "Math", "test", "0", "How many?", (), answer)


def test_score_generation_strict_vs_flexible():
    q = _gsm8k_question("#### 1,234")
    both = score_generation(q, " 1000 + 234 = 1234\n#### 1,234")
    assert (both.gold, both.extracted_strict) == ("1234", "1234")
    assert both.correct_strict and both.correct
    flexible_only = score_generation(q, " so she has $1,234.00")
    assert flexible_only.extracted_strict is None and not flexible_only.correct_strict
    assert flexible_only.extracted_flexible == "1234" and flexible_only.correct
    strict_only = score_generation(q, "#### 1234 because 5 - 1 = 4")
    assert strict_only.correct_strict and not strict_only.correct
    neither = score_generation(q, "I do not know")
    assert (neither.extracted_strict, neither.extracted_flexible, neither.correct) == (None, None, False)


def test_cut_at_stop():
    text = " 5 + 3 = 8\n#### 8\n\nQuestion: next one<|im_end|>"
    assert cut_at_stop(text, ["Question:", "<|im_end|>"]) == " 5 + 3 = 8\n#### 8\n\n"
    assert cut_at_stop(text, ["<|im_end|>", "Question:"]) == " 5 + 3 = 8\n#### 8\n\n"  # earliest wins
    assert cut_at_stop(text, ["nowhere"]) == text
    assert cut_at_stop("abc", ["", "c"]) == "ab"


# ----------------------------------------------------------------------------- generation

def _sharp_model(path):
    """The tiny model with larger random weights: its greedy output depends strongly on the prompt,
    so a padding or position bug changes the text instead of hiding in a flat distribution."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3)
    return model.eval(), tokenizer


PREFIX = "Question: Natalia sold clips to 48 of her friends.\nAnswer: 48 + 24 = 72\n#### 72\n\n" * 3
PROMPTS = [PREFIX + f"Question: {q}\nAnswer:" for q in [
    "How many?",
    "小明有5个苹果，吃了2个，还剩几个？ And a much longer question with many more words in it",
    "The capital of France is",
    "x",
    "Weng earns $12 an hour for babysitting. How much did she earn?",
]]


def _hf_greedy(model, tokenizer, prompt, n):
    ids = tokenizer(prompt, return_tensors="pt")
    out = model.generate(**ids, do_sample=False, max_new_tokens=n, min_new_tokens=n,
                         pad_token_id=tokenizer.pad_token_id)
    return out[0, ids["input_ids"].shape[1]:].tolist()


@pytest.mark.parametrize("share_prefix", [True, False])
def test_batched_greedy_equals_one_by_one(tiny_model_dir, share_prefix, monkeypatch):
    model, tokenizer = _sharp_model(tiny_model_dir)
    model.generation_config.eos_token_id = None  # no EOS: every sequence runs the full 12 tokens
    monkeypatch.setattr(G, "_eos_ids", lambda model, tokenizer: set())
    kw = dict(stop_strings=[], max_new_tokens=12, progress=False)
    batched = generate_greedy(model, tokenizer, PROMPTS, batch_size=3, share_prefix=share_prefix, **kw)
    single = [generate_greedy(model, tokenizer, [p], batch_size=1, share_prefix=False, **kw)[0]
              for p in PROMPTS]
    assert batched == single
    assert len(set(batched)) == len(PROMPTS)  # the outputs really depend on the prompt
    # and both agree with transformers' own greedy decoding
    reference = [tokenizer.decode(_hf_greedy(model, tokenizer, p, 12)) for p in PROMPTS]
    assert batched == reference


@pytest.mark.parametrize("batch_size", [8, 2])
def test_stop_strings_cut_each_sequence(tiny_model_dir, batch_size):
    model, tokenizer = _sharp_model(tiny_model_dir)
    full = generate_greedy(model, tokenizer, PROMPTS, stop_strings=[], max_new_tokens=16,
                           batch_size=1, progress=False)
    # A stop string taken from the middle of one generation: that sequence is cut there, any
    # other that happens to contain it too, the rest run on unchanged.
    half = len(full[0]) // 2
    stop = next(full[0][i:i + 2] for i in range(half, len(full[0]) - 1) if full[0][i:i + 2].strip())
    cut = generate_greedy(model, tokenizer, PROMPTS, stop_strings=[stop], max_new_tokens=16,
                          batch_size=batch_size, progress=False)
    assert cut == [cut_at_stop(t, [stop]) for t in full]
    assert len(cut[0]) < len(full[0])
    assert all(stop not in t for t in cut)


def test_eos_token_ends_a_sequence(tiny_model_dir):
    model, tokenizer = _sharp_model(tiny_model_dir)
    tokens = _hf_greedy(model, tokenizer, PROMPTS[0], 10)
    eos = tokens[4]  # pretend the 5th generated token is the model's EOS
    model.generation_config.eos_token_id = eos
    out = generate_greedy(model, tokenizer, PROMPTS[:1], stop_strings=[], max_new_tokens=10,
                          progress=False)
    assert out[0] == tokenizer.decode(tokens[:tokens.index(eos)])


def test_finished_sequences_leave_the_batch(tiny_llama_dir):
    model, tokenizer = _sharp_model(tiny_llama_dir)
    full = generate_greedy(model, tokenizer, PROMPTS, stop_strings=[], max_new_tokens=12,
                           batch_size=8, progress=False)
    stop = full[1][:3]  # sequence 1 stops within its first few tokens
    batch_sizes = []
    hook = model.register_forward_pre_hook(
        lambda mod, args, kwargs: batch_sizes.append(kwargs["input_ids"].shape[0]), with_kwargs=True)
    try:
        generate_greedy(model, tokenizer, PROMPTS, stop_strings=[stop], max_new_tokens=12,
                        batch_size=8, progress=False, share_prefix=False)
    finally:
        hook.remove()
    assert batch_sizes[0] == len(PROMPTS)  # the prefill
    assert min(batch_sizes) < len(PROMPTS)  # the stopped sequence no longer computes
    assert batch_sizes == sorted(batch_sizes, reverse=True)


@pytest.mark.parametrize("share_prefix", [True, False])
def test_continuous_batching_equals_one_by_one(tiny_model_dir, share_prefix, monkeypatch):
    """Prompts join a running batch as others finish, the cache is compacted, outputs unchanged."""
    model, tokenizer = _sharp_model(tiny_model_dir)
    prompts = PROMPTS + [PREFIX + f"Question: {n} apples and {n + 1} pears?\nAnswer:" for n in range(5)]
    full = [generate_greedy(model, tokenizer, [p], stop_strings=[], max_new_tokens=14,
                            share_prefix=False, progress=False)[0] for p in prompts]
    # Stops that end the sequences after different numbers of tokens.
    stops = sorted({full[i][2 + i:4 + i] for i in (0, 3, 6) if full[i][2 + i:4 + i].strip()})
    expected = [cut_at_stop(t, stops) for t in full]
    assert len({len(t) for t in expected}) > 2
    monkeypatch.setattr(G, "COMPACT_MIN_COLUMNS", 1)  # compact whenever a column falls free
    shapes = []
    hook = model.register_forward_pre_hook(
        lambda mod, args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True)
    try:
        out = generate_greedy(model, tokenizer, prompts, stop_strings=stops, max_new_tokens=14,
                              batch_size=3, share_prefix=share_prefix, progress=False)
    finally:
        hook.remove()
    assert out == expected
    first_step = next(i for i, s in enumerate(shapes) if s[1] == 1)
    assert any(s[1] > 1 for s in shapes[first_step:])  # a prompt joined a running batch
    assert max(s[0] for s in shapes) <= 3


def test_max_new_tokens_and_empty_input(tiny_qwen_dir):
    model, tokenizer = _sharp_model(tiny_qwen_dir)
    assert generate_greedy(model, tokenizer, [], stop_strings=[], progress=False) == []
    short = generate_greedy(model, tokenizer, PROMPTS[:2], stop_strings=[], max_new_tokens=3,
                            progress=False)
    longer = generate_greedy(model, tokenizer, PROMPTS[:2], stop_strings=[], max_new_tokens=6,
                             progress=False)
    for a, b in zip(short, longer):
        assert b.startswith(a) and len(b) > len(a)
    assert len(tokenizer(short[0], add_special_tokens=False)["input_ids"]) <= 4


# ----------------------------------------------------------------------------- GSM8K

def test_gsm8k_prompts_match_the_harness_layout(tiny_qwen_dir, shared_data):
    from zhtune.data.benchmarks import few_shot_examples, load_benchmark
    from zhtune.models.families import get_family

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_qwen_dir)
    q = load_benchmark("gsm8k", "test", shared_data)[0]
    shots = few_shot_examples("gsm8k", "main", 2, data_dir=shared_data)
    prompt = G.gsm8k_prompts(tokenizer, None, [q], shots=2, data_dir=shared_data)[0]
    assert prompt == "".join(f"Question: {s.question}\nAnswer: {s.answer}\n\n" for s in shots) + \
        f"Question: {q.question}\nAnswer:"
    cot = G.gsm8k_prompts(tokenizer, None, [q], shots=5, cot=True, data_dir=shared_data)[0]
    assert cot.count("The answer is") == 8 and cot.endswith(f"Question: {q.question}\nAnswer:")
    family = get_family("qwen2-instruct")
    chat = G.gsm8k_prompts(tokenizer, family, [q], shots=0, chat=True, data_dir=shared_data)[0]
    assert chat.startswith("<|im_start|>") and chat.endswith("<|im_start|>assistant\nAnswer:")
    stops = G.gsm8k_stop_strings(tokenizer, family)
    assert {"Question:", "<|im_end|>", "<|endoftext|>"} <= set(stops)


@pytest.mark.parametrize("chat", [False, True])
def test_evaluate_gsm8k_end_to_end(tiny_model_dir, shared_data, chat):
    from zhtune.data.benchmarks import load_benchmark
    from zhtune.models.loading import load_model

    lm = load_model(str(tiny_model_dir))
    questions = load_benchmark("gsm8k", "test", shared_data)[:3]
    preds = G.evaluate_gsm8k(lm.model, lm.tokenizer, lm.family, questions, shots=2,
                             data_dir=shared_data, batch_size=2, max_new_tokens=8, chat=chat,
                             progress=False)
    assert [p.question for p in preds] == questions
    assert [p.gold for p in preds] == [gsm8k_gold(q.answer) for q in questions]
    for p in preds:
        assert "Question:" not in p.generation
        assert p.extracted_flexible == extract_flexible(p.generation)
        assert p.correct == (p.extracted_flexible == p.gold)


def test_evaluate_gsm8k_scores_what_was_generated(monkeypatch, shared_data):
    from zhtune.data.benchmarks import load_benchmark

    questions = load_benchmark("gsm8k", "test", shared_data)[:3]
    golds = [gsm8k_gold(q.answer) for q in questions]
    seen = {}

    def fake_generate(model, tokenizer, prompts, *, stop_strings, **kw):
        seen["prompts"], seen["stops"] = prompts, stop_strings
        return [f" so\n#### {golds[0]}", f" it is {golds[1]} dollars", " no idea"]

    monkeypatch.setattr(G, "generate_greedy", fake_generate)
    preds = G.evaluate_gsm8k(None, None, None, questions, shots=0, data_dir=shared_data,
                             progress=False)
    assert [(p.correct_strict, p.correct) for p in preds] == [(True, True), (False, True), (False, False)]
    assert seen["prompts"][1] == f"Question: {questions[1].question}\nAnswer:"
    assert "Question:" in seen["stops"]
