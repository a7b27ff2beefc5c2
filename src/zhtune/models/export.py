"""``zhtune export``: a model (or a LoRA adapter alone) as GGUF for llama.cpp and Ollama.

The files follow llama.cpp's own converters (``convert_hf_to_gguf.py``, ``convert_lora_to_gguf.py``):
tensor names from gguf's tensor map (``model.layers.3.self_attn.q_proj`` → ``blk.3.attn_q``), the
Llama architecture's query and key rows permuted into GGML's rotary layout (Qwen2 uses the NeoX
layout and needs none), one-dimensional tensors (norms, biases) kept in F32, the hyper-parameters
under ``<arch>.*`` and the tokenizer as ``tokenizer.ggml.*`` (``gguf_vocab``). ``q8_0`` is gguf's
bit-exact port of ggml's Q8_0; a matrix whose rows are not a multiple of 32 stays F16, as in llama.cpp.

An adapter folder is merged into its base first (in memory), unless ``adapter_only``: then the LoRA
matrices are written as a llama.cpp LoRA adapter (``general.type = adapter``, ``*.weight.lora_a`` /
``.lora_b``, ``adapter.lora.alpha``), to be applied to the base model's GGUF at run time.
"""
from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zhtune.errors import UserError

log = logging.getLogger(__name__)

OUTTYPES = ("f16", "q8_0")
ARCHITECTURES = {"llama": "LLAMA", "mistral": "LLAMA", "qwen2": "QWEN2"}  # model_type -> gguf MODEL_ARCH


def permute_rotary(weight: np.ndarray, n_head: int) -> np.ndarray:
    """HF's rotary layout (each head's first half, then its second half) → GGML's interleaved pairs:
    llama.cpp's ``LlamaModel.permute`` (for keys, ``n_head`` is the number of key-value heads)."""
    return (weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def _architecture(config: Any) -> tuple[str, Any]:
    import gguf

    model_type = config.model_type
    if model_type not in ARCHITECTURES:
        raise UserError(f"model_type {model_type!r}: GGUF export supports Llama and Qwen2 models")
    if getattr(config, "rope_scaling", None) and (config.rope_scaling.get("rope_type") or
                                                  config.rope_scaling.get("type")) not in (None, "default"):
        raise UserError(f"rope scaling {config.rope_scaling} is not supported by zhtune export yet")
    arch = getattr(gguf.MODEL_ARCH, ARCHITECTURES[model_type])
    return gguf.MODEL_ARCH_NAMES[arch], arch


def _gguf_name(hf_name: str, name_map: Any) -> str:
    base, _, suffix = hf_name.rpartition(".")
    mapped = name_map.get_name(base)
    if mapped is None:
        raise UserError(f"tensor {hf_name}: no GGUF name for it (not a Llama/Qwen2 weight?)")
    return f"{mapped}.{suffix}"


def _heads(config: Any) -> tuple[int, int, int]:
    n_head = config.num_attention_heads
    n_kv = getattr(config, "num_key_value_heads", None) or n_head
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_head
    return n_head, n_kv, head_dim


def _rotary_heads(arch_name: str, gguf_name: str, config: Any) -> int | None:
    """How many heads to permute this tensor over (None: leave it)."""
    if arch_name != "llama":
        return None
    n_head, n_kv, _ = _heads(config)
    if ".attn_q." in gguf_name:
        return n_head
    if ".attn_k." in gguf_name:
        return n_kv
    return None


def _encode(data: np.ndarray, outtype: str, is_matrix: bool) -> tuple[np.ndarray, Any]:
    """(array, raw_dtype) for the writer: 1-D tensors F32, matrices F16 or Q8_0."""
    from gguf import GGMLQuantizationType, quants

    data = data.astype(np.float32)
    if not is_matrix:
        return data, None
    if outtype == "q8_0" and data.shape[-1] % 32 == 0:
        return quants.quantize(data, GGMLQuantizationType.Q8_0), GGMLQuantizationType.Q8_0
    return data.astype(np.float16), None


def _add_hparams(writer: Any, config: Any, arch_name: str, name: str, n_vocab: int) -> None:
    from gguf import GGML_QUANT_VERSION

    n_head, n_kv, head_dim = _heads(config)
    writer.add_name(name)
    writer.add_type("model")
    writer.add_quantization_version(GGML_QUANT_VERSION)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(getattr(config, "rope_theta", None) or
                                    (getattr(config, "rope_parameters", None) or {}).get("rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(n_vocab)
    if head_dim != config.hidden_size // n_head:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)


def _atomic_writer(path: Path, arch_name: str):
    import gguf

    tmp = path.with_name(f".{path.name}.partial")
    # use_temp_file: each tensor goes to a spooled file as it is added, so a 7B export holds the
    # model once, not the model and a second copy of it in the output type.
    return gguf.GGUFWriter(str(tmp), arch=arch_name, use_temp_file=True), tmp


def _finish(writer: Any, tmp: Path, path: Path) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(tmp, path)


def write_model_gguf(model: Any, tokenizer: Any, family: Any, source_dir: Path, path: Path,
                     outtype: str, name: str) -> dict:
    """One GGUF file of a full (merged) model."""
    from gguf import LlamaFileType, get_tensor_name_map

    from zhtune.models.families import ensure_chat_template
    from zhtune.models.gguf_vocab import add_tokenizer

    config = model.config
    arch_name, arch = _architecture(config)
    name_map = get_tensor_name_map(arch, config.num_hidden_layers)
    state = model.state_dict()
    n_vocab = state["model.embed_tokens.weight"].shape[0]
    writer, tmp = _atomic_writer(path, arch_name)
    _add_hparams(writer, config, arch_name, name, n_vocab)
    writer.add_file_type(LlamaFileType.MOSTLY_F16 if outtype == "f16" else LlamaFileType.MOSTLY_Q8_0)
    ensure_chat_template(tokenizer, family)
    with tempfile.TemporaryDirectory() as work:
        kind = add_tokenizer(writer, tokenizer, source_dir, Path(work), arch_name, n_vocab,
                             getattr(tokenizer, "chat_template", None))
    tied = bool(getattr(config, "tie_word_embeddings", False))
    types: dict[str, int] = {}
    for hf_name, tensor in state.items():
        if hf_name == "lm_head.weight" and tied:
            continue  # llama.cpp reuses token_embd when there is no output.weight
        if hf_name.endswith("rotary_emb.inv_freq"):
            continue
        gguf_name = _gguf_name(hf_name, name_map)
        data = tensor.detach().to(torch.float32).cpu().numpy()
        heads = _rotary_heads(arch_name, gguf_name, config)
        if heads is not None:
            data = permute_rotary(data, heads)
        array, raw = _encode(data, outtype, data.ndim == 2)
        writer.add_tensor(gguf_name, array, raw_dtype=raw)
        label = raw.name if raw is not None else {np.float32: "F32", np.float16: "F16"}[array.dtype.type]
        types[label] = types.get(label, 0) + 1
    _finish(writer, tmp, path)
    return {"file": str(path), "outtype": outtype, "tokenizer": kind, "tensor_types": types,
            "bytes": path.stat().st_size}


def _adapter_config(adapter_dir: Path) -> dict:
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    if cfg.get("use_dora"):
        raise UserError(f"{adapter_dir}: a DoRA adapter has no llama.cpp LoRA form; export it merged")
    if cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
        raise UserError(f"{adapter_dir}: per-module ranks or alphas cannot be written as one "
                        "adapter.lora.alpha; export it merged")
    return cfg


def write_adapter_gguf(adapter_dir: Path, base_config: Any, path: Path, outtype: str, name: str) -> dict:
    """The LoRA matrices as a llama.cpp adapter (convert_lora_to_gguf.py's layout).

    llama.cpp scales a LoRA product by ``adapter.lora.alpha / rank``; rsLoRA's ``alpha / sqrt(rank)``
    is written as ``alpha * sqrt(rank)`` so that the same scale comes out."""
    from gguf import get_tensor_name_map
    from safetensors.torch import load_file

    cfg = _adapter_config(adapter_dir)
    arch_name, arch = _architecture(base_config)
    name_map = get_tensor_name_map(arch, base_config.num_hidden_layers)
    rank, alpha = int(cfg["r"]), float(cfg["lora_alpha"])
    if cfg.get("use_rslora"):
        alpha = alpha * rank ** 0.5
    weights = load_file(str(adapter_dir / "adapter_model.safetensors"))
    writer, tmp = _atomic_writer(path, arch_name)
    writer.add_name(name)
    writer.add_type("adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", alpha)
    count = 0
    for key in sorted(weights):
        m = re.fullmatch(r"base_model\.model\.(.+)\.lora_([AB])\.weight", key)
        if m is None:
            raise UserError(f"{adapter_dir}: {key}: only LoRA A/B matrices can be exported "
                            "(modules_to_save or embedding adapters: export merged)")
        gguf_name = _gguf_name(m.group(1) + ".weight", name_map)
        data = weights[key].to(torch.float32).numpy()
        heads = _rotary_heads(arch_name, gguf_name, base_config)
        if heads is not None and m.group(2) == "B":  # the permutation acts on output rows: B's
            data = permute_rotary(data, heads)
        array, raw = _encode(data, outtype, True)
        writer.add_tensor(f"{gguf_name}.lora_{m.group(2).lower()}", array, raw_dtype=raw)
        count += 1
    _finish(writer, tmp, path)
    return {"file": str(path), "outtype": outtype, "lora_tensors": count, "alpha": alpha, "rank": rank,
            "bytes": path.stat().st_size}


def display_name(spec: str) -> str:
    """general.name: the model's own name, without the folder or the source's prefix."""
    return Path(str(spec).split(":", 1)[-1].rstrip("/")).name


def export_gguf(source: str, output_dir: str | Path, *, outtypes: tuple[str, ...] = OUTTYPES,
                adapter_only: bool = False, base_model: str | None = None,
                base_gguf: str | None = None, name: str | None = None) -> dict:
    """Export ``source`` (a model: folder, hub id, builtin:..., or an adapter folder) to
    ``output_dir``: ``model-<outtype>.gguf`` per outtype (``adapter-<outtype>.gguf`` with
    ``adapter_only``), a ``Modelfile`` for Ollama and ``export.json`` listing what was written."""
    from zhtune.io import atomic_write_json, atomic_write_text

    bad = [t for t in outtypes if t not in OUTTYPES]
    if bad or not outtypes:
        raise UserError(f"--outtype {','.join(bad) or '(none)'}: choose from {', '.join(OUTTYPES)}")
    is_adapter = (Path(source) / "adapter_config.json").exists()
    if adapter_only and not is_adapter:
        raise UserError(f"{source}: --adapter-only needs a LoRA adapter folder (no adapter_config.json)")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if adapter_only:
        record, text = _export_adapter(Path(source), out, outtypes, base_model, base_gguf, name)
    else:
        record, text = _export_model(source, is_adapter, out, outtypes, base_model, name)
    record = {"source": source, **record}
    atomic_write_text(out / "Modelfile", text)
    record["modelfile"] = str(out / "Modelfile")
    atomic_write_json(out / "export.json", record)
    log.info("exported %s -> %s", source, out)
    return record


def _export_adapter(adapter: Path, out: Path, outtypes, base_model, base_gguf, name) -> tuple[dict, str]:
    from transformers import AutoConfig

    from zhtune.config import ModelConfig
    from zhtune.models.loading import load_tokenizer_and_family
    from zhtune.models.merge import adapter_base
    from zhtune.models.ollama import modelfile

    spec, revision, meta = adapter_base(adapter, base_model)
    tokenizer, family, base_dir = load_tokenizer_and_family(
        ModelConfig(name_or_path=spec, revision=revision, family=meta.get("family")))
    base_config = AutoConfig.from_pretrained(str(base_dir))
    label = name or f"{display_name(spec)} LoRA"
    files = [write_adapter_gguf(adapter, base_config, out / f"adapter-{t}.gguf", t, label) for t in outtypes]
    text = modelfile(base_gguf or "BASE.gguf", tokenizer, family, adapter_path=f"./adapter-{outtypes[0]}.gguf")
    return {"files": files, "base_model": spec, "family": family.name, "base_gguf": base_gguf}, text


def _export_model(source: str, is_adapter: bool, out: Path, outtypes, base_model, name) -> tuple[dict, str]:
    from zhtune.config import ModelConfig
    from zhtune.models.loading import load_model
    from zhtune.models.merge import load_merged, saved_dtype
    from zhtune.models.ollama import modelfile
    from zhtune.models.sources import resolve_model

    if is_adapter:
        loaded, _meta, spec = load_merged(source, base_model=base_model)
        source_dir = Path(resolve_model(spec))
    else:
        dtype = saved_dtype(Path(resolve_model(source)))  # a 7B model stays in bf16 in memory
        loaded = load_model(ModelConfig(name_or_path=source, device="cpu", dtype=dtype))
        spec, source_dir = source, loaded.path
    label = name or display_name(spec)
    files = [write_model_gguf(loaded.model, loaded.tokenizer, loaded.family, source_dir,
                              out / f"model-{t}.gguf", t, label) for t in outtypes]
    text = modelfile(f"./model-{outtypes[-1]}.gguf", loaded.tokenizer, loaded.family)
    return {"files": files, "base_model": spec, "family": loaded.family.name}, text
