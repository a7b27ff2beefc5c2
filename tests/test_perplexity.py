"""Bits per character: a hand computation, padding invariance, windows, and the probe texts."""
from __future__ import annotations

import json
import math
import re

import pytest
import torch

from zhtune.errors import UserError
from zhtune.eval.perplexity import (_windows, bits_per_char, conditioning_token, control_texts,
                                    probe_description, probe_texts)


def _load(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def _hand_bpc(model, tokenizer, text: str) -> float:
    """-sum log2 p(token | everything before) over the text's tokens, from one full forward pass."""
    ids = [conditioning_token(tokenizer)] + tokenizer(text, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), dim=-1)
    nats = -sum(logp[i, ids[i + 1]].item() for i in range(len(ids) - 1))
    return nats / math.log(2) / len(text)


def test_conditioning_token(tiny_llama_dir, tiny_qwen_dir):
    _, llama = _load(tiny_llama_dir)
    _, qwen = _load(tiny_qwen_dir)
    assert conditioning_token(llama) == llama.bos_token_id  # Llama adds <s> itself
    assert qwen.convert_ids_to_tokens(conditioning_token(qwen)) == "<|endoftext|>"  # Qwen: no BOS


def test_bpc_equals_hand_computation(tiny_model_dir):
    model, tokenizer = _load(tiny_model_dir)
    text = "中国的首都是北京。The capital of France is Paris."
    result = bits_per_char(model, tokenizer, [text])
    assert result.chars == len(text)
    assert result.tokens == len(tokenizer(text, add_special_tokens=False)["input_ids"])
    assert result.bits_per_char == pytest.approx(_hand_bpc(model, tokenizer, text), rel=1e-5)


def test_several_texts_are_scored_separately(tiny_qwen_dir):
    model, tokenizer = _load(tiny_qwen_dir)
    texts = ["小明有5个苹果，吃了2个。", "A cat sat on the mat.", "答案：A"]
    result = bits_per_char(model, tokenizer, texts)
    total_bits = sum(_hand_bpc(model, tokenizer, t) * len(t) for t in texts)
    assert result.bits_per_char == pytest.approx(total_bits / sum(map(len, texts)), rel=1e-5)
    # each text's own bits, in input order, whatever batch it was scored in
    assert [c for c, _ in result.per_text] == [len(t) for t in texts]
    for (_, bits), t in zip(result.per_text, texts):
        assert bits == pytest.approx(_hand_bpc(model, tokenizer, t) * len(t), rel=1e-5)


def test_batching_and_padding_do_not_change_the_result(tiny_model_dir, shared_data):
    model, tokenizer = _load(tiny_model_dir)
    texts = probe_texts("zh", shared_data, 1500) + probe_texts("en", shared_data, 1500)
    one = bits_per_char(model, tokenizer, texts, batch_size=1)
    many = bits_per_char(model, tokenizer, texts, batch_size=16)
    shuffled = bits_per_char(model, tokenizer, texts[::-1], batch_size=5)
    assert one.tokens == many.tokens == shuffled.tokens
    assert many.bits_per_char == pytest.approx(one.bits_per_char, rel=1e-5)
    assert shuffled.bits_per_char == pytest.approx(one.bits_per_char, rel=1e-5)
    assert [b for _, b in many.per_text] == pytest.approx([b for _, b in one.per_text], rel=1e-5)
    assert [b for _, b in shuffled.per_text][::-1] == pytest.approx([b for _, b in one.per_text], rel=1e-5)


@pytest.mark.parametrize("length", [2, 5, 16, 17, 40, 101])
def test_windows_score_every_token_once(length):
    ids = list(range(length))
    max_length = 16
    scored = []
    for window, n in _windows(ids, max_length):
        assert 1 <= n < len(window) <= max_length
        start = ids.index(window[0])
        assert window == ids[start:start + len(window)]
        first_scored = start + len(window) - n
        assert first_scored == 1 or first_scored - start >= max_length // 2  # enough context
        scored.extend(range(first_scored, start + len(window)))
    assert scored == list(range(1, length))


def test_long_text_is_windowed(tiny_llama_dir):
    model, tokenizer = _load(tiny_llama_dir)
    text = "The capital of France is Paris. A cat sat on the mat. " * 8
    whole = bits_per_char(model, tokenizer, [text], max_length=1024)
    windowed = bits_per_char(model, tokenizer, [text], max_length=24)
    assert windowed.tokens == whole.tokens
    assert whole.bits_per_char == pytest.approx(_hand_bpc(model, tokenizer, text), rel=1e-5)
    assert windowed.bits_per_char != whole.bits_per_char  # less context, a different number
    assert abs(windowed.bits_per_char - whole.bits_per_char) < 0.2 * whole.bits_per_char


def test_training_on_a_text_lowers_its_bpc(tiny_qwen_dir):
    model, tokenizer = _load(tiny_qwen_dir)
    text = "长城是中国古代的军事防御工程。小明有5个苹果，吃了2个，还剩3个。"
    before = bits_per_char(model, tokenizer, [text]).bits_per_char
    ids = torch.tensor([[conditioning_token(tokenizer)] + tokenizer(text)["input_ids"]])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(15):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    after = bits_per_char(model, tokenizer, [text]).bits_per_char
    assert after < 0.8 * before
    assert model.training  # bits_per_char put the model back as it found it


# ----------------------------------------------------------------------------- probe texts

def _cjk_fraction(text: str) -> float:
    letters = [c for c in text if c.isalpha()]
    return sum(bool(re.match(r"[\u4e00-\u9fff]", c)) for c in letters) / max(1, len(letters))


@pytest.mark.parametrize("max_chars", [500, 4000, 20000])
def test_probe_texts_sizes_and_languages(shared_data, max_chars):
    zh = probe_texts("zh", shared_data, max_chars)
    en = probe_texts("en", shared_data, max_chars)
    assert sum(map(len, zh)) == max_chars and sum(map(len, en)) == max_chars
    assert _cjk_fraction("".join(zh)) > 0.8
    assert _cjk_fraction("".join(en)) < 0.01
    assert probe_texts("zh", shared_data, max_chars) == zh  # deterministic


def test_probe_texts_are_seed_tasks_in_id_order(shared_data):
    rows = [json.loads(line) for line in open(shared_data / "alpaca/seed_tasks.jsonl", encoding="utf-8")]
    by_id = {r["id"]: r for r in rows}
    texts = probe_texts("en", shared_data, 10**7)
    assert len(texts) == len(rows)  # everything, when asked for more than there is
    first, second = by_id["seed_task_0"], by_id["seed_task_1"]
    assert texts[0].startswith(first["instruction"].strip())
    assert first["instances"][0]["output"].strip() in texts[0]
    assert texts[1].startswith(second["instruction"].strip())
    small = probe_texts("en", shared_data, 100)
    assert small == [texts[0][:100]]  # a smaller probe is a prefix of a larger one


def test_probe_texts_errors(tmp_path):
    with pytest.raises(UserError, match="zh_seed_tasks.json"):
        probe_texts("zh", tmp_path)
    (tmp_path / "alpaca").mkdir()
    (tmp_path / "alpaca/seed_tasks.jsonl").write_text(
        '{"id": "seed_task_0", "instruction": "Say hi.", "instances": [{"input": "", "output": "hi"}]}\n'
        "{not json\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"seed_tasks.jsonl, line 2"):
        probe_texts("en", tmp_path)
    with pytest.raises(UserError, match="language"):
        probe_texts("fr", tmp_path)


@pytest.mark.parametrize("max_chars", [300, 20000])
def test_control_texts_sizes_and_languages(shared_data, max_chars):
    zh, en = control_texts("zh", shared_data, max_chars), control_texts("en", shared_data, max_chars)
    assert sum(map(len, zh)) == max_chars and sum(map(len, en)) == max_chars
    # C-Eval STEM questions carry LaTeX: Chinese is most, not nearly all, of the letters
    assert _cjk_fraction("".join(zh)) > 0.6 and _cjk_fraction("".join(en)) < 0.01
    assert control_texts("zh", shared_data, max_chars) == zh  # deterministic
    assert not set(zh) & set(probe_texts("zh", shared_data, 10**7))  # another genre, other texts


def test_control_texts_are_unscored_questions_round_robin(shared_data):
    """C-Eval test (no labels) and MMLU val: question then options, no answer, one subject after another."""
    from zhtune.data.benchmarks import load_benchmark

    texts = control_texts("en", shared_data, 10**7)
    val = load_benchmark("mmlu", "val", data_dir=shared_data)
    assert len(texts) == len(val)  # everything, when asked for more than there is
    subjects = sorted({q.subject for q in val})
    first = [next(q for q in val if q.subject == s) for s in subjects[:2]]
    for text, q in zip(texts, first):  # the first question of the first subject, then of the second
        assert text.split("\n") == [q.question.strip(), *(c.strip() for c in q.choices)]
        assert q.answer is not None and f"\n{q.answer}" not in text[-2:]
    zh = control_texts("zh", shared_data, 10**7)
    test = load_benchmark("ceval", "test", data_dir=shared_data, require_answers=False)
    assert len(zh) == len(test) and all(q.answer is None for q in test)
    assert control_texts("zh", shared_data, 100) == [zh[0][:100]]  # a smaller probe is a prefix


def test_control_texts_errors_and_descriptions(tmp_path, monkeypatch):
    monkeypatch.delenv("ZHTUNE_DATA_DIR", raising=False)
    with pytest.raises(UserError, match="language"):
        control_texts("fr", tmp_path)
    with pytest.raises(UserError, match="ceval"):
        control_texts("zh", tmp_path)  # no ceval/ folder
    assert probe_description("zh_control") == {
        "lang": "zh", "kind": "control", "source": "ceval/test: question and options, round-robin over subjects"}
    assert probe_description("en") == {"lang": "en", "kind": "seed_tasks", "source": "alpaca/seed_tasks.jsonl"}
