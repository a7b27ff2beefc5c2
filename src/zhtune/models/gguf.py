"""Turn a GGUF file into an ordinary Hugging Face folder (config.json, safetensors, tokenizer).

transformers reads GGUF itself (``from_pretrained(folder, gguf_file=...)``) and dequantizes every
tensor, but refuses to ``save_pretrained`` a model loaded that way. So we copy its weights into a
fresh model built from the same config and save that one: the result loads like any hub checkpoint,
fast and without the ``gguf`` package.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from zhtune.errors import UserError


class GGUFConversionError(UserError, ValueError):
    """A GGUF file transformers cannot turn into a model (architecture, tensors, tokenizer)."""


def gguf_metadata(gguf_path: str | Path) -> dict:
    """A few header fields (architecture, name, tensor types) without reading the tensors."""
    from gguf import GGUFReader

    # The gguf reader parses by memory-mapping and slicing: a truncated, empty or foreign file fails
    # deep inside it with whatever numpy raises (IndexError, ValueError, OverflowError...). Any such
    # failure means the same thing to the user, so it becomes one line that names the file.
    try:
        reader = GGUFReader(str(gguf_path))
        meta = {}
        for key in ("general.architecture", "general.name", "general.license", "general.file_type"):
            if key in reader.fields:
                meta[key] = reader.fields[key].contents()
        meta["tensor_types"] = sorted({t.tensor_type.name for t in reader.tensors})
        meta["tensor_count"] = len(reader.tensors)
        meta["parameters"] = int(sum(int(t.n_elements) for t in reader.tensors))
    except Exception as err:  # noqa: BLE001 - see above
        first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise GGUFConversionError(f"{gguf_path}: not a readable GGUF file (truncated or corrupt?): "
                                  f"{type(err).__name__}: {first_line}") from err
    return meta


def convert_gguf(gguf_path: str | Path, out_dir: str | Path, dtype: torch.dtype = torch.float32,
                 tie_from: str | None = None) -> dict:
    """Dequantize ``gguf_path`` and save model + tokenizer to ``out_dir`` as safetensors.

    ``tie_from``: the model ties input and output embeddings but the GGUF stores the matrix twice
    (``token_embd`` and ``output``, often at different quantizations; llama.cpp does this for small
    Qwen2.5 models). Keep one copy for both, giving the original model's shape and parameter count:
    ``"embed"`` keeps the token embeddings, ``"lm_head"`` the output matrix. The two copies must agree
    (relative difference below 10%), or they are not copies and tying would change the model.
    Returns facts for the cache record (parameters, dtype, seconds, chat template present).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    gguf_path = Path(gguf_path)
    out_dir = Path(out_dir)
    start = time.perf_counter()
    try:
        # dequantize=True: plain dense tensors, even where a packed-GGUF matmul kernel is installed.
        loaded = AutoModelForCausalLM.from_pretrained(
            str(gguf_path.parent), gguf_file=gguf_path.name, dtype=dtype,
            quantization_config=GgufConfig(gguf_file=gguf_path.name, dequantize=True))
    except (ValueError, KeyError, RuntimeError) as err:
        raise GGUFConversionError(f"{gguf_path}: transformers cannot load this GGUF file: {err}") from err
    config = loaded.config
    embed = loaded.get_input_embeddings().weight
    embed_key = next(k for k, v in loaded.named_parameters(remove_duplicate=False) if v is embed)
    state = {k: v.detach().to(dtype).contiguous() for k, v in loaded.state_dict().items()}
    del loaded, embed

    facts: dict = {}
    if tie_from is not None:
        if tie_from not in ("embed", "lm_head"):
            raise ValueError(f"tie_from must be 'embed' or 'lm_head', not {tie_from!r}")
        head = state.pop("lm_head.weight", None)
        if head is not None and not config.tie_word_embeddings:
            emb = state[embed_key]
            rel = ((head.float() - emb.float()).norm() / emb.float().norm()).item()
            if head.shape != emb.shape or rel > 0.1:
                raise GGUFConversionError(
                    f"{gguf_path}: output and token embedding matrices differ (relative difference "
                    f"{rel:.3f}); they are not copies of one tied matrix, refusing to tie them")
            facts["tied_relative_difference"] = round(rel, 5)
            if tie_from == "lm_head":
                state[embed_key] = head
        config.tie_word_embeddings = True
    # Fresh model, same architecture: save_pretrained works on it and records nothing GGUF-specific.
    config.name_or_path = ""
    if hasattr(config, "quantization_config"):  # the weights we save are plain tensors now
        del config.quantization_config
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if config.tie_word_embeddings:
        model.tie_weights()
        missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise GGUFConversionError(
            f"{gguf_path}: weights do not match the {config.model_type} architecture "
            f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    model.save_pretrained(str(out_dir), safe_serialization=True)

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    except (ValueError, KeyError, OSError) as err:
        raise GGUFConversionError(f"{gguf_path}: cannot build a tokenizer from this GGUF: {err}") from err
    max_len = getattr(config, "max_position_embeddings", None)
    if max_len and tokenizer.model_max_length > max_len:  # GGUF tokenizers come with "unlimited"
        tokenizer.model_max_length = max_len
    tokenizer.save_pretrained(str(out_dir))

    params = sum(p.numel() for p in model.parameters())  # tied tensors are counted once
    return {
        **facts,
        "model_type": config.model_type,
        "parameters": params,
        "dtype": str(dtype).removeprefix("torch."),
        "tie_word_embeddings": bool(config.tie_word_embeddings),
        "chat_template": bool(getattr(tokenizer, "chat_template", None)),
        "convert_seconds": round(time.perf_counter() - start, 1),
    }
