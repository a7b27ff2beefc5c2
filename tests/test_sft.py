"""SFT formatting: prompt masking, truncation, packing without cross-sample attention, manifest."""
from __future__ import annotations

import pytest
import torch

from zhtune.config import load_config
from zhtune.data.instructions import load_instructions
from zhtune.data.sft import (IGNORE_INDEX, ChatFormatter, build_rows, check_compatible, fit_to_length,
                             load_prepared, pack_lengths, prepare_dataset, tokenizer_fingerprint)
from zhtune.errors import UserError
from zhtune.models.families import format_chat
from zhtune.models.loading import load_tokenizer_and_family
from zhtune.train.collator import PackedCollator


# Tiny models on a shared 2-core machine: one thread (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


CONVERSATION = [
    {"role": "user", "content": "小明有5个苹果，吃了2个，还剩几个？"},
    {"role": "assistant", "content": "还剩3个。"},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "The capital of France is Paris."},
]


def _cfg(model_dir, *overrides):
    return load_config(None, [f"model.name_or_path={model_dir}", *overrides])


def _formatter(model_dir):
    tokenizer, family, _ = load_tokenizer_and_family(_cfg(model_dir).model)
    return ChatFormatter(tokenizer, family, chat=True)


def _labelled_runs(labels):
    runs, cur = [], []
    for x in labels:
        if x != IGNORE_INDEX:
            cur.append(x)
        elif cur:
            runs.append(cur)
            cur = []
    return runs + ([cur] if cur else [])


def test_labels_are_exactly_the_answers_and_turn_ends(tiny_model_dir):
    fmt = _formatter(tiny_model_dir)
    tok = fmt.tokenizer
    ids, labels = fmt.encode(CONVERSATION)
    assert len(ids) == len(labels)
    answers = [m["content"] for m in CONVERSATION if m["role"] == "assistant"]
    runs = _labelled_runs(labels)
    # One labelled run per assistant turn, each the answer followed by the turn end token.
    assert len(runs) == len(answers)
    end_id = tok.convert_tokens_to_ids(fmt.turn_end)
    for run, answer in zip(runs, answers):
        assert run == tok.encode(answer + fmt.turn_end, add_special_tokens=False)
        assert run[-1] == end_id
        assert tok.decode(run[:-1]).strip() == answer
    labelled_positions = [i for i, x in enumerate(labels) if x != IGNORE_INDEX]
    assert all(labels[i] == ids[i] for i in labelled_positions)
    # Nothing of the prompts (user text, template markers, system prompt) is labelled.
    n_prompt = len(ids) - len(labelled_positions)
    assert n_prompt > sum(len(tok.encode(m["content"], add_special_tokens=False))
                          for m in CONVERSATION if m["role"] == "user")
    if fmt.chat:  # Qwen2 / ChatML: the ids spell the chat template's own rendering
        assert fmt.turn_end == "<|im_end|>"
        assert tok.decode(ids) == format_chat(tok, fmt.family, CONVERSATION).rstrip("\n")
    else:  # base Llama: plain instruction template, answers closed by EOS, BOS first
        assert fmt.turn_end == tok.eos_token and ids[0] == tok.bos_token_id
        assert "### Instruction:" in tok.decode(ids) and "### Response:" in tok.decode(ids)


def test_family_formats(tiny_llama_dir, tiny_qwen_dir):
    assert _formatter(tiny_qwen_dir).template_name == "chat"
    assert _formatter(tiny_llama_dir).template_name == "plain"
    tokenizer, family, _ = load_tokenizer_and_family(_cfg(tiny_qwen_dir).model)
    plain = ChatFormatter(tokenizer, family, chat=False)  # data.chat_format=false
    ids, labels = plain.encode(CONVERSATION[:2])
    assert "### Response:" in tokenizer.decode(ids)
    assert _labelled_runs(labels)[0][-1] == tokenizer.eos_token_id


def test_truncation_policy():
    ids = list(range(30))
    labels = [IGNORE_INDEX] * 10 + list(range(10, 30))
    assert fit_to_length(ids, labels, 40)[2] == "ok"
    cut_ids, cut_labels, status = fit_to_length(ids, labels, 20)
    assert status == "truncated" and cut_ids == ids[:20] and cut_labels == labels[:20]
    assert fit_to_length(ids, labels, 15)[2] == "prompt_too_long"  # only 5 answer tokens would fit
    short = [IGNORE_INDEX] * 10 + [1, 2, 3]
    assert fit_to_length(list(range(13)), short, 12)[2] == "prompt_too_long"
    assert fit_to_length(list(range(4)), [IGNORE_INDEX] * 4, 12)[2] == "no_labels"


def test_packing_keeps_every_sample():
    lengths = [50, 7, 33, 64, 1, 20, 20, 45, 12, 3, 64, 30]
    bins = pack_lengths(lengths, 64)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= 64 for b in bins)
    assert len(bins) < len(lengths)
    assert len(bins) == -(-sum(lengths) // 64)  # these lengths pack perfectly: 5 bins
    samples = [(list(range(100 + n, 100 + 2 * n)), [IGNORE_INDEX] + list(range(n - 1))) for n in lengths]
    rows = build_rows(samples, 64, packing=True, seed=0)
    assert sum(len(r) for r in rows["input_ids"]) == sum(lengths)
    assert sorted(t for r in rows["input_ids"] for t in r) == sorted(t for s in samples for t in s[0])
    for r, p in zip(rows["input_ids"], rows["position_ids"]):
        assert len(r) == len(p) <= 64
        assert sum(1 for x in p if x == 0) >= 1 and p[0] == 0
    with pytest.raises(ValueError, match="more than max_length"):
        pack_lengths([65], 64)


def _real_samples(fmt, shared_data, n):
    records, _ = load_instructions(["belle/dev1K.json"], shared_data)
    return [fmt.encode(r.messages) for r in records[:n]]


def test_packed_logits_equal_unpacked(tiny_model_dir, shared_data):
    """No token attends across packed samples: each sample's logits are the same alone or packed,
    through the training path (collator + LoRA model with the cache off)."""
    from transformers import AutoModelForCausalLM

    from zhtune.train.lora import build_peft_model, lora_settings

    cfg = _cfg(tiny_model_dir, "lora.dropout=0.0")
    fmt = _formatter(tiny_model_dir)
    samples = [(ids[:60], labels[:60]) for ids, labels in _real_samples(fmt, shared_data, 5)]
    rows = build_rows(samples, max_length=200, packing=True, seed=0)
    assert any(len(set(range(len(r))) - set(p)) for r, p in zip(rows["input_ids"], rows["position_ids"]))
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model, _ = build_peft_model(model, cfg, lora_settings(cfg, fmt.family))
    with torch.no_grad():  # make the adapters do something
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    model.train()  # as in training (dropout is 0 here, so the comparison is exact)
    collate = PackedCollator(pad_token_id=fmt.tokenizer.pad_token_id)
    batch = collate([{k: rows[k][i] for k in rows} for i in range(len(rows["input_ids"]))])
    assert len(rows["input_ids"]) < len(samples) and batch["input_ids"].shape[0] > 1  # packed and padded
    batch.pop("row_tokens")
    with torch.no_grad():
        packed = model(**batch).logits
        checked = 0
        for r, (ids, positions) in enumerate(zip(rows["input_ids"], rows["position_ids"])):
            starts = [i for i, p in enumerate(positions) if p == 0] + [len(ids)]
            for a, b in zip(starts, starts[1:]):
                alone = model(input_ids=torch.tensor([ids[a:b]])).logits[0]
                torch.testing.assert_close(packed[r, a:b], alone, atol=1e-5, rtol=1e-4)
                checked += 1
        assert checked == len(samples)
        # The pitfall build_peft_model turns the cache off for: with the KV cache on, transformers
        # does not build the packed mask and, under its sdpa, the second sample of a row sees the
        # first. zhtune's per-sample attention splits by positions either way.
        model.config.use_cache = True
        torch.testing.assert_close(model(**batch).logits, packed)
        model.config._attn_implementation = "sdpa"
        leaky = model(**batch).logits
    row = next(i for i, p in enumerate(rows["position_ids"]) if p.count(0) > 1)
    second = rows["position_ids"][row].index(0, 1)
    assert not torch.allclose(leaky[row, second:second + 5], packed[row, second:second + 5], atol=1e-3)


def test_prepare_manifest_reuse_and_tokenizer_check(tiny_qwen_dir, tiny_llama_dir, shared_data, tmp_path):
    cfg = _cfg(tiny_qwen_dir, "data.sample_size=120", "data.max_length=512", "data.val_size=0.1")
    out = tmp_path / "prepared"
    m = prepare_dataset(cfg, out, data_dir=shared_data, show_progress=False)
    c = m["counts"]
    assert m["family"] == "qwen2" and m["template"] == "chat" and m["packing"] is True
    assert c["records_in"] == {"train": 108, "validation": 12}
    for split in ("train", "validation"):
        dropped = sum(c["dropped"][split].values())
        assert c["records_in"][split] == c["samples_out"][split] + dropped
    assert c["rows"]["train"] < c["samples_out"]["train"]  # packed
    train, val = load_prepared(out)
    assert len(train) == c["rows"]["train"] and len(val) == c["rows"]["validation"]
    assert sum(len(r) for r in train["input_ids"]) == c["tokens"]["train"]
    assert max(len(r) for r in train["input_ids"]) <= 512
    assert (out / "data_report.json").exists() and (out / "config.resolved.yaml").exists()
    assert m["data_report"]["counts"]["read"] == 1000
    assert m["data_report"]["counts"]["train_truncated"] == c["truncated"]["train"]
    assert m["data_report"]["counts"]["train_prompt_too_long"] == c["dropped"]["train"]["prompt_too_long"]

    stamp = (out / "train" / "dataset_info.json").stat().st_mtime_ns
    assert prepare_dataset(cfg, out, data_dir=shared_data, show_progress=False) == m
    assert (out / "train" / "dataset_info.json").stat().st_mtime_ns == stamp  # reused, not rebuilt

    qwen_tok, qwen_family, _ = load_tokenizer_and_family(cfg.model)
    assert check_compatible(out, qwen_tok, qwen_family)["tokenizer_fingerprint"] == tokenizer_fingerprint(qwen_tok)
    llama_tok, llama_family, _ = load_tokenizer_and_family(_cfg(tiny_llama_dir).model)
    with pytest.raises(UserError, match="keep Qwen and Llama data apart"):
        check_compatible(out, llama_tok, llama_family, str(tiny_llama_dir))
    with pytest.raises(UserError, match="not a complete prepared dataset"):
        check_compatible(tmp_path, qwen_tok, qwen_family)


def test_prepare_cli_with_original_flags(tiny_llama_dir, shared_data, tmp_path):
    from typer.testing import CliRunner

    from zhtune.cli import app
    from zhtune.io import read_json

    out = tmp_path / "data"
    result = CliRunner().invoke(app, ["prepare", "--model_name_or_path", str(tiny_llama_dir),
                                      "--data_dir", str(shared_data), "--output_dir", str(out),
                                      "--no-packing", "data.sample_size=40", "data.max_length=64"])
    assert result.exit_code == 0, result.output
    m = read_json(out / "manifest.json")
    assert m["family"] == "llama2" and m["template"] == "plain" and m["packing"] is False
    assert m["counts"]["rows"]["train"] == m["counts"]["samples_out"]["train"]
    assert m["counts"]["truncated"]["train"] > 0  # BELLE answers are longer than 64 tokens
    assert "records in" in result.output
