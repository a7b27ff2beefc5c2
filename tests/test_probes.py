"""Forgetting probes during training: the probe set, logging at the right steps, early stop,
the best adapter, and resume. Tiny Llama + PEFT LoRA + HF Trainer, a few steps on text made here."""
from __future__ import annotations

import json

import pytest
import torch

from zhtune.data.benchmarks import Question
from zhtune.io import read_jsonl
from zhtune.train.probes import (PROBE_KEYS, ForgettingProbeCallback, ProbeSet, build_probe_set,
                                 derived_metrics, round_robin, run_probes)


def _q(subject: str, i: int) -> Question:
    return Question("mmlu", subject, "STEM", "test", str(i), f"{subject} {i}?", ("a", "b", "c", "d"), "A")


def test_round_robin_spreads_over_subjects():
    questions = [_q("b", i) for i in range(3)] + [_q("a", 0)] + [_q("c", i) for i in range(2)]
    picked = round_robin(questions, 5)
    assert [(q.subject, q.id) for q in picked] == [("a", "0"), ("b", "0"), ("c", "0"), ("b", "1"), ("c", "1")]
    assert len(round_robin(questions, 100)) == len(questions)  # no more than there is
    assert round_robin(questions, 0) == []


def test_build_probe_set(shared_data):
    probes = build_probe_set(shared_data, ceval_questions=40, mmlu_questions=30, perplexity_chars=2000)
    ceval, mmlu = probes.questions["ceval"], probes.questions["mmlu"]
    assert len(ceval) == 40 and len(mmlu) == 30
    assert len({q.subject for q in ceval}) == 40  # 52 subjects: one question from each of 40
    assert len({q.subject for q in mmlu}) == 30
    assert {q.split for q in ceval} == {"val"} and {q.split for q in mmlu} == {"test"}
    assert sum(map(len, probes.zh_texts)) == sum(map(len, probes.en_texts)) == 2000
    again = build_probe_set(shared_data, ceval_questions=40, mmlu_questions=30, perplexity_chars=2000)
    assert again.questions == probes.questions


def test_probe_set_of_any_benchmarks(shared_data):
    probes = build_probe_set(shared_data, questions={"cmmlu": 5, "gsm8k": 2}, perplexity_chars=0)
    assert list(probes.questions) == ["cmmlu", "gsm8k"]
    assert len({q.subject for q in probes.questions["cmmlu"]}) == 5
    assert [q.key for q in probes.questions["gsm8k"]] == ["gsm8k/main/test/0", "gsm8k/main/test/1"]
    d = derived_metrics({"probe/cmmlu_acc": 0.6, "probe/gsm8k_acc": 0.1},
                        {"probe/cmmlu_acc": 0.4, "probe/gsm8k_acc": 0.2})
    assert d["probe/chinese_gain_cmmlu"] == pytest.approx(0.2)
    assert d["probe/english_retention_gsm8k"] == pytest.approx(0.5)


def test_derived_metrics():
    base = {"probe/ceval_acc": 0.25, "probe/mmlu_acc": 0.5, "probe/zh_bpc": 4.0, "probe/en_bpc": 2.0}
    now = {"probe/ceval_acc": 0.35, "probe/mmlu_acc": 0.25, "probe/zh_bpc": 2.0, "probe/en_bpc": 2.5}
    d = derived_metrics(now, base)
    assert d["probe/english_retention"] == pytest.approx(0.8)
    assert d["probe/english_retention_mmlu"] == pytest.approx(0.5)
    assert d["probe/chinese_gain_bits"] == pytest.approx(2.0)
    assert d["probe/chinese_gain_ceval"] == pytest.approx(0.1)
    assert d["probe/trade_off"] == pytest.approx((4.0 / 2.0 - 1) + (2.0 / 2.5 - 1))
    assert derived_metrics(base, base)["probe/trade_off"] == 0.0


# ----------------------------------------------------------------------------- training runs

@pytest.fixture(scope="module")
def probes(shared_data) -> ProbeSet:
    return build_probe_set(shared_data, ceval_questions=6, mmlu_questions=6, perplexity_chars=600)


def _lora_model(path, lm_head=False):
    """LoRA on the tiny model. ``lm_head=True`` also adapts the LM head: the random tiny model's
    logits are too small for its layers alone to make any token likely."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(path)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"]
    config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, task_type="CAUSAL_LM",
                        target_modules=targets + (["lm_head"] if lm_head else []))
    return get_peft_model(base, config)


def _trainer(model, tokenizer, texts, out_dir, *, max_steps, lr, callbacks=(), save_steps=None):
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    rows = [{"input_ids": tokenizer(t, truncation=True, max_length=64)["input_ids"]} for t in texts]
    args = TrainingArguments(
        output_dir=str(out_dir), max_steps=max_steps, per_device_train_batch_size=2,
        learning_rate=lr, lr_scheduler_type="constant", logging_steps=1, report_to=[],
        save_strategy="steps" if save_steps else "no", save_steps=save_steps or 500,
        use_cpu=True, disable_tqdm=True, seed=0, data_seed=0)
    return Trainer(model=model, args=args, train_dataset=rows, callbacks=list(callbacks),
                   data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False))


def _tokenizer(path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def _family(path):
    from transformers import AutoConfig

    from zhtune.models.families import detect_family

    return detect_family(AutoConfig.from_pretrained(path), _tokenizer(path))


def test_probes_logged_at_the_right_steps_and_best_adapter(tiny_llama_dir, probes, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from zhtune.eval.perplexity import bits_per_char

    tokenizer = _tokenizer(tiny_llama_dir)
    model = _lora_model(tiny_llama_dir, lm_head=True)
    callback = ForgettingProbeCallback(probes, tokenizer, _family(tiny_llama_dir), every_steps=2,
                                       out_dir=tmp_path, keep_best=True)
    # Training on the probe texts themselves: both bits-per-character numbers fall, so the
    # trade-off score rises above the baseline's 0 and an adapter is kept.
    texts = (probes.zh_texts + probes.en_texts) * 2
    trainer = _trainer(model, tokenizer, texts, tmp_path / "run", max_steps=6, lr=5e-3)
    callback.bind(trainer)
    trainer.train()

    rows = read_jsonl(tmp_path / "probes.jsonl")
    assert [r["step"] for r in rows] == [0, 2, 4, 6]
    assert [r["baseline"] for r in rows] == [True, False, False, False]
    for r in rows:
        assert all(isinstance(r[k], float) for k in PROBE_KEYS)
        assert 0.0 <= r["probe/ceval_acc"] <= 1.0 and r["probe/en_bpc"] > 0
        assert "epoch" in r and "probe/english_retention" in r and "probe/chinese_gain_bits" in r
    assert rows[0]["probe/english_retention"] == 1.0 and rows[0]["probe/trade_off"] == 0.0
    assert rows[-1]["probe/zh_bpc"] < rows[0]["probe/zh_bpc"]
    # They went through trainer.log: in state.log_history at the same steps.
    logged = [h for h in trainer.state.log_history if "probe/zh_bpc" in h]
    assert [h["step"] for h in logged] == [0, 2, 4, 6]
    assert [h["probe/zh_bpc"] for h in logged] == [r["probe/zh_bpc"] for r in rows]

    # The best adapter is the probe with the highest trade-off, and it reproduces that probe.
    best_row = max(rows[1:], key=lambda r: r["probe/trade_off"])
    assert best_row["probe/trade_off"] > 0 and best_row.get("saved_best")
    best = tmp_path / "best_adapter"
    info = json.loads((best / "probe.json").read_text())
    assert info["step"] == best_row["step"]
    assert (best / "adapter_model.safetensors").is_file() and (best / "adapter_config.json").is_file()
    assert not list(tmp_path.glob(".best_adapter*"))  # no temporary folders left
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    reloaded = PeftModel.from_pretrained(base, best).eval()
    zh = bits_per_char(reloaded, tokenizer, probes.zh_texts).bits_per_char
    assert zh == pytest.approx(info["probe/zh_bpc"], rel=1e-4)


def test_early_stop_when_english_retention_drops(tiny_llama_dir, probes, tmp_path):
    tokenizer = _tokenizer(tiny_llama_dir)
    model = _lora_model(tiny_llama_dir, lm_head=True)
    callback = ForgettingProbeCallback(probes, tokenizer, _family(tiny_llama_dir), every_steps=3,
                                       out_dir=tmp_path, min_english_retention=0.9999)
    # One character over and over: within a few steps the model gives it most of the probability
    # mass after any context, so English text must become less likely (retention ~0.6 by step 9).
    trainer = _trainer(model, tokenizer, ["的" * 60] * 8, tmp_path / "run", max_steps=30, lr=3e-2,
                       callbacks=[callback])  # not bound: the log_history fallback
    trainer.train()

    rows = read_jsonl(tmp_path / "probes.jsonl")
    stop_step = trainer.state.global_step
    assert stop_step < 30  # stopped early ...
    assert rows[-1]["step"] == stop_step and rows[-1]["probe/english_retention"] < 0.9999  # ... here
    assert all(r["probe/english_retention"] >= 0.9999 for r in rows[:-1])  # the first probe below
    assert [r["step"] for r in rows] == list(range(0, stop_step + 1, 3))
    assert "english_retention" in rows[-1]["stop_reason"] and callback.stop_reason == rows[-1]["stop_reason"]
    assert [h["step"] for h in trainer.state.log_history if "probe/en_bpc" in h] == [r["step"] for r in rows]
    assert not (tmp_path / "best_adapter").exists()  # keep_best was off


def test_resume_keeps_the_first_baseline(tiny_llama_dir, probes, tmp_path):
    tokenizer = _tokenizer(tiny_llama_dir)
    family = _family(tiny_llama_dir)
    texts = probes.zh_texts * 4
    first = ForgettingProbeCallback(probes, tokenizer, family, every_steps=2, out_dir=tmp_path)
    trainer = _trainer(_lora_model(tiny_llama_dir), tokenizer, texts, tmp_path / "run", max_steps=2,
                       lr=5e-3, save_steps=2)
    first.bind(trainer)
    trainer.train()

    second = ForgettingProbeCallback(probes, tokenizer, family, every_steps=2, out_dir=tmp_path)
    trainer = _trainer(_lora_model(tiny_llama_dir), tokenizer, texts, tmp_path / "run", max_steps=4,
                       lr=5e-3, save_steps=2)
    second.bind(trainer)
    trainer.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-2"))

    rows = read_jsonl(tmp_path / "probes.jsonl")
    assert [(r["step"], r["baseline"]) for r in rows] == [(0, True), (2, False), (4, False)]
    assert second.baseline == {k: rows[0][k] for k in PROBE_KEYS}
    retention = rows[0]["probe/en_bpc"] / rows[2]["probe/en_bpc"]
    assert rows[2]["probe/english_retention"] == pytest.approx(retention)


def test_run_probes_keys_and_empty_parts(tiny_qwen_dir, probes):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_qwen_dir).eval()
    tokenizer = _tokenizer(tiny_qwen_dir)
    metrics = run_probes(model, tokenizer, _family(tiny_qwen_dir), probes)
    assert set(metrics) == set(PROBE_KEYS)
    only_text = ProbeSet(questions={"ceval": [], "mmlu": []}, zh_texts=probes.zh_texts, en_texts=[], shots=0)
    assert set(run_probes(model, tokenizer, None, only_text)) == {"probe/zh_bpc"}
    assert run_probes(model, tokenizer, None, only_text)["probe/zh_bpc"] == metrics["probe/zh_bpc"]
    with pytest.raises(ValueError, match="perplexity"):
        ForgettingProbeCallback(only_text, tokenizer, None, every_steps=1, out_dir=".", keep_best=True)


def test_probes_refused_under_zero3_before_any_work(tmp_path):
    from zhtune.config import load_config
    from zhtune.errors import UserError
    from zhtune.experiment import run_experiment
    from zhtune.train.lora import train_lora
    from zhtune.train.probes import check_probes_supported
    from zhtune.train.trainer import zero_stage

    assert zero_stage("zero3") == 3 and zero_stage("zero2") == 2 and zero_stage(None) is None
    check_probes_supported(True, 2)  # ZeRO-2 keeps whole weights on every process: allowed
    check_probes_supported(False, 3)
    cfg = load_config(None, ["model.name_or_path=/nonexistent/model", "train.deepspeed=zero3",
                             "train.probes.every_steps=10", f"output.dir={tmp_path / 'run'}"])
    for start in (lambda: train_lora(cfg, tmp_path / "train"), lambda: run_experiment(cfg)):
        with pytest.raises(UserError, match="ZeRO-3"):  # not "no such model": nothing loaded yet
            start()
    assert not (tmp_path / "train").exists()
