"""zhtune export: GGUF files that transformers (and so llama.cpp's conventions) read back as the same
model; LoRA adapters in llama.cpp's layout; Ollama Modelfiles in the family's chat format."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from zhtune.errors import UserError
from zhtune.models.export import export_gguf, permute_rotary

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TEXT = "你好，世界。The quick brown fox jumps over 13 lazy dogs!\n<|im_end|>"


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits[0]


def _load_gguf(folder, file):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=file, dtype=torch.float32)


def _gguf_tensors(path):
    from gguf import GGUFReader, dequantize

    reader = GGUFReader(str(path))
    return {t.name: (t.tensor_type.name, dequantize(t.data, t.tensor_type)) for t in reader.tensors}, reader


def _rounded_as(model, outtype):
    """The format's own tolerance: the HF model with every matrix rounded as the format stores it
    (f16; Q8_0 through ggml's reference quantiser, rows of 32-blocks), vectors kept in f32."""
    import copy

    from gguf import GGMLQuantizationType, dequantize, quantize

    rounded = copy.deepcopy(model)
    with torch.no_grad():
        for p in rounded.parameters():
            if p.ndim != 2:
                continue
            if outtype == "q8_0" and p.shape[-1] % 32 == 0:
                q = quantize(p.numpy(), GGMLQuantizationType.Q8_0)
                p.copy_(torch.from_numpy(dequantize(q, GGMLQuantizationType.Q8_0)))
            else:
                p.copy_(p.half().float())
    return rounded


def _check_round_trip(ref_model, tokenizer, out):
    """Every outtype loads back as the model rounded the way the format rounds it (to float32
    arithmetic noise); the rounding itself moves the logits by a fraction of a percent (f16) or a
    few percent (Q8_0, on these random tiny models); the tokenizer rebuilt from the GGUF metadata
    encodes as the model's own."""
    from transformers import AutoTokenizer

    ids = tokenizer(TEXT, return_tensors="pt").input_ids
    ref = _logits(ref_model, ids)
    scale = ref.abs().max().item()
    errors = {}
    for t in ("f16", "q8_0"):
        got = _logits(_load_gguf(out, f"model-{t}.gguf"), ids)
        expected = _logits(_rounded_as(ref_model, t), ids)
        assert (got - expected).abs().max().item() < 1e-4 * scale, t
        errors[t] = (got - ref).abs().max().item() / scale
        gguf_tok = AutoTokenizer.from_pretrained(str(out), gguf_file=f"model-{t}.gguf")
        assert gguf_tok(TEXT).input_ids == ids[0].tolist()
    assert errors["f16"] < 2e-3 and errors["q8_0"] < 0.1, errors
    assert errors["q8_0"] > 3 * errors["f16"], errors  # Q8_0 is coarser: it was really written
    return errors


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_model_round_trip(kind, tiny_llama_dir, tiny_qwen_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = tiny_llama_dir if kind == "llama" else tiny_qwen_dir
    record = export_gguf(str(model_dir), tmp_path)
    ref = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    _check_round_trip(ref, AutoTokenizer.from_pretrained(str(model_dir)), tmp_path)

    tensors, reader = _gguf_tensors(tmp_path / "model-q8_0.gguf")
    assert reader.fields["general.architecture"].contents() == kind
    assert tensors["blk.0.attn_norm.weight"][0] == "F32" and tensors["blk.0.attn_q.weight"][0] == "Q8_0"
    assert ("output.weight" in tensors) == (kind == "llama")  # the tiny Qwen2 ties its embeddings
    assert reader.fields["tokenizer.ggml.model"].contents() == ("llama" if kind == "llama" else "gpt2")
    if kind == "qwen2":
        assert reader.fields["tokenizer.ggml.pre"].contents() == "qwen2"
        assert "blk.1.attn_k.bias" in tensors
    assert json.loads((tmp_path / "export.json").read_text())["files"] == record["files"]
    assert (tmp_path / "Modelfile").read_text().startswith("# Written by zhtune export")


def test_rotary_permutation_is_llama_cpps():
    """llama.cpp's LlamaModel.permute on a small matrix, written out by hand: per head, rows
    (0, 1, 2, 3) = first half (0, 1), second half (2, 3) become interleaved pairs (0, 2, 1, 3)."""
    w = np.arange(16, dtype=np.float32).reshape(8, 2)  # 2 heads of 4 rows
    expected = w[[0, 2, 1, 3, 4, 6, 5, 7]]
    assert np.array_equal(permute_rotary(w, 2), expected)


def _random_adapter(model_dir, out, rslora=False):
    """A LoRA adapter with non-zero B (as after training) on every linear layer, saved by PEFT."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False,
                     use_rslora=rslora)
    peft = get_peft_model(model, cfg)
    peft.save_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(model_dir)).save_pretrained(str(out))
    return out


def test_adapter_is_merged_before_export(tiny_llama_dir, tmp_path):
    from zhtune.models.merge import load_merged

    adapter = _random_adapter(tiny_llama_dir, tmp_path / "adapter")
    export_gguf(str(adapter), tmp_path / "gguf")
    merged, _meta, spec = load_merged(adapter)
    assert spec == str(tiny_llama_dir)
    _check_round_trip(merged.model.float(), merged.tokenizer, tmp_path / "gguf")


@pytest.mark.parametrize("kind,rslora", [("llama", False), ("qwen2", True)])
def test_adapter_alone_is_what_llama_cpp_adds_to_the_base(kind, rslora, tiny_llama_dir, tiny_qwen_dir, tmp_path):
    """llama.cpp computes W x + (alpha / r) B (A x) with the adapter GGUF's A, B and alpha on top of
    the base GGUF's W: that must be the merged model's GGUF weight (Q/K rows permuted alike)."""
    model_dir = tiny_llama_dir if kind == "llama" else tiny_qwen_dir
    adapter = _random_adapter(model_dir, tmp_path / "adapter", rslora=rslora)
    record = export_gguf(str(adapter), tmp_path / "lora", outtypes=("f16",), adapter_only=True,
                         base_gguf="./base/model-f16.gguf")
    export_gguf(str(model_dir), tmp_path / "base", outtypes=("f16",))
    export_gguf(str(adapter), tmp_path / "merged", outtypes=("f16",))
    lora, reader = _gguf_tensors(tmp_path / "lora" / "adapter-f16.gguf")
    base, _ = _gguf_tensors(tmp_path / "base" / "model-f16.gguf")
    merged, _ = _gguf_tensors(tmp_path / "merged" / "model-f16.gguf")
    assert reader.fields["general.type"].contents() == "adapter"
    assert reader.fields["adapter.type"].contents() == "lora"
    alpha = reader.fields["adapter.lora.alpha"].contents()
    assert alpha == pytest.approx(8 * 2 if rslora else 8)  # rsLoRA: alpha/sqrt(r) == alpha'/r
    pairs = sorted(n[:-len(".lora_a")] for n in lora if n.endswith(".lora_a"))
    assert len(pairs) == 7 * 2 and record["files"][0]["lora_tensors"] == 2 * len(pairs)
    for name in pairs:
        a, b = lora[name + ".lora_a"][1], lora[name + ".lora_b"][1]
        assert a.shape[0] == 4 and b.shape[1] == 4  # A: (r, in), B: (out, r) as numpy arrays
        applied = base[name][1] + alpha / 4 * (b @ a)
        scale = np.abs(merged[name][1]).max()
        assert np.abs(applied - merged[name][1]).max() < 2e-3 * scale, name
    modelfile = (tmp_path / "lora" / "Modelfile").read_text()
    assert "FROM ./base/model-f16.gguf\nADAPTER ./adapter-f16.gguf\n" in modelfile


def test_errors_are_one_line(tiny_llama_dir, tmp_path):
    with pytest.raises(UserError, match="--outtype q4_k"):
        export_gguf(str(tiny_llama_dir), tmp_path, outtypes=("q4_k",))
    with pytest.raises(UserError, match="needs a LoRA adapter folder"):
        export_gguf(str(tiny_llama_dir), tmp_path, adapter_only=True)


def test_cli_export(tiny_qwen_dir, tmp_path):
    from typer.testing import CliRunner

    from zhtune.cli import app

    result = CliRunner().invoke(app, ["export", str(tiny_qwen_dir), "--output-dir", str(tmp_path),
                                      "--outtype", "q8_0", "--name", "tiny"])
    assert result.exit_code == 0, result.output
    assert "model-q8_0.gguf" in result.output and not (tmp_path / "model-f16.gguf").exists()
    _, reader = _gguf_tensors(tmp_path / "model-q8_0.gguf")
    assert reader.fields["general.name"].contents() == "tiny"
    assert "FROM ./model-q8_0.gguf" in (tmp_path / "Modelfile").read_text()


@pytest.mark.parametrize("family_name,tokenizer_kind", [
    ("llama2", "llama"), ("llama2-chat", "llama"), ("llama3", "llama"), ("llama", "llama"),
    ("qwen2-instruct", "qwen2"), ("llama", "smollm2-like")])
def test_modelfile_sends_what_zhtune_trained_on(family_name, tokenizer_kind, tiny_llama_dir, tiny_qwen_dir):
    """The Modelfile's TEMPLATE, filled in as Ollama fills it, is the family's prompt as
    format_prompt writes it for training and evaluation, less a BOS that the tokenizer (and so
    llama.cpp) adds itself. "smollm2-like": ChatML whose bos_token is <|im_start|>, never added."""
    from zhtune.models.families import format_prompt, get_family
    from zhtune.models.loading import load_tokenizer
    from zhtune.models.ollama import modelfile, ollama_template, render_ollama_template

    family = get_family(family_name)
    tok = load_tokenizer(tiny_llama_dir if tokenizer_kind == "llama" else tiny_qwen_dir)
    if tokenizer_kind == "smollm2-like":
        tok.bos_token = "<|im_start|>"
    template = ollama_template(tok, family)
    for system in (None, "请简要回答。"):
        want = format_prompt(tok, family, "中国的首都是哪里？", system=system)
        if tokenizer_kind == "llama":  # the tiny Llama tokenizer prepends <s>
            assert want.startswith("<s>") or family_name in ("llama2", "llama")
            want = want.removeprefix("<s>")
        assert render_ollama_template(template, "中国的首都是哪里？", system) == want, system
    if tokenizer_kind == "smollm2-like":
        assert template.startswith("{{ if .System }}<|im_start|>system")
    text = modelfile("./model-f16.gguf", tok, family)
    for stop in family.stop_strings:
        assert f'PARAMETER stop "{stop}"' in text
    assert f'TEMPLATE """{template}"""' in text
    assert ("{{ .System }}" in template) == (family_name != "llama2")  # plain prompts have no system


def test_sentencepiece_llama_round_trip(tmp_path, shared_data):
    """A Llama-2-style tokenizer.model (SentencePiece BPE, byte fallback) is written as llama.cpp
    writes it (pieces, scores, types from the .model) and read back to the same ids."""
    import sentencepiece as spm
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaTokenizer

    model_dir = tmp_path / "spm-llama"
    model_dir.mkdir()
    lines = [json.loads(line)["instruction"] for line in
             (shared_data / "belle" / "dev1K.json").read_text(encoding="utf-8").splitlines()[:300]]
    (tmp_path / "corpus.txt").write_text("\n".join(lines + ["The quick brown fox jumps over lazy dogs."] * 20),
                                         encoding="utf-8")
    spm.SentencePieceTrainer.train(input=str(tmp_path / "corpus.txt"), model_prefix=str(model_dir / "tokenizer"),
                                   vocab_size=800, model_type="bpe", byte_fallback=True, character_coverage=0.98,
                                   bos_id=1, eos_id=2, unk_id=0, pad_id=-1, minloglevel=2)
    tok = LlamaTokenizer.from_pretrained(str(model_dir), add_bos_token=True)  # as Llama-2 does
    assert tok("a").input_ids[0] == 1
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, bos_token_id=1, eos_token_id=2)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(str(model_dir))
    tok.save_pretrained(str(model_dir))
    export_gguf(str(model_dir), tmp_path / "out")
    _, reader = _gguf_tensors(tmp_path / "out" / "model-f16.gguf")
    assert reader.fields["tokenizer.ggml.model"].contents() == "llama"
    sp = spm.SentencePieceProcessor(model_file=str(model_dir / "tokenizer.model"))
    assert reader.fields["tokenizer.ggml.scores"].contents()[100] == pytest.approx(sp.get_score(100))
    assert reader.fields["tokenizer.ggml.add_bos_token"].contents() is True
    _check_round_trip(model, tok, tmp_path / "out")
