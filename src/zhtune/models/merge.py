"""Merging a LoRA adapter into its base model: a full model anyone can load without PEFT."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

from zhtune import __version__
from zhtune.artifacts import read_adapter_meta, utc_timestamp
from zhtune.config import ModelConfig
from zhtune.errors import UserError
from zhtune.io import atomic_write_json, read_json

log = logging.getLogger(__name__)


def saved_dtype(model_dir: Path) -> str:
    """The dtype a checkpoint's config.json names (float32 if it names none)."""
    cfg = read_json(Path(model_dir) / "config.json")
    saved = cfg.get("dtype") or cfg.get("torch_dtype")
    return saved if saved in ("float32", "bfloat16", "float16") else "float32"


def adapter_base(adapter_dir: Path, base_model: str | None = None) -> tuple[str, str | None, dict]:
    """``(base model spec, revision, zhtune_adapter.json)`` of an adapter folder: ``base_model`` if
    given, else what training recorded, else PEFT's ``base_model_name_or_path``."""
    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").exists():
        raise UserError(f"{adapter_dir}: not a LoRA adapter folder (no adapter_config.json)")
    meta = read_adapter_meta(adapter_dir)
    spec = base_model or meta.get("base_model") or read_json(
        adapter_dir / "adapter_config.json").get("base_model_name_or_path")
    if not spec:
        raise UserError(f"{adapter_dir}: the base model is not recorded; pass --base-model")
    return spec, (meta.get("revision") if not base_model else None), meta


def load_merged(adapter_dir: str | Path, *, base_model: str | None = None, dtype: str = "auto"):
    """The base model with the adapter folded in, in memory (CPU): ``(LoadedModel, meta, spec)``.

    ``LoadedModel.model`` is the merged model; the tokenizer is the adapter folder's. ``dtype="auto"``
    keeps the base checkpoint's own dtype (float32 if it does not say).
    """
    from peft import PeftModel

    from zhtune.models.loading import load_model, load_tokenizer
    from zhtune.models.sources import resolve_model

    adapter_dir = Path(adapter_dir)
    spec, revision, meta = adapter_base(adapter_dir, base_model)
    if dtype == "auto":
        dtype = saved_dtype(Path(resolve_model(spec, revision=revision)))
    loaded = load_model(ModelConfig(name_or_path=spec, revision=revision, family=meta.get("family"),
                                    dtype=dtype, device="cpu"))
    loaded.model = PeftModel.from_pretrained(loaded.model, str(adapter_dir)).merge_and_unload()
    loaded.tokenizer = load_tokenizer(adapter_dir)
    return loaded, {**meta, "dtype": dtype}, spec


def merge_adapter(adapter_dir: str | Path, output_dir: str | Path, *, base_model: str | None = None,
                  dtype: str = "auto") -> Path:
    """Fold a LoRA adapter into its base model and save a full model (safetensors + tokenizer).

    ``dtype="auto"`` keeps the base checkpoint's own dtype (float32 if it does not say).
    """
    from transformers import AutoTokenizer

    adapter_dir, output_dir = Path(adapter_dir), Path(output_dir)
    loaded, meta, spec = load_merged(adapter_dir, base_model=base_model, dtype=dtype)
    dtype = meta["dtype"]
    merged = loaded.model
    merged.config.use_cache = True
    tmp = output_dir.with_name(f".{output_dir.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    merged.save_pretrained(str(tmp))
    AutoTokenizer.from_pretrained(str(adapter_dir)).save_pretrained(str(tmp))
    atomic_write_json(tmp / "zhtune_merged.json", {
        "adapter": str(adapter_dir.resolve()), "base_model": spec, "family": meta.get("family"),
        "dtype": dtype, "created": utc_timestamp(),
        "zhtune_version": __version__})
    if output_dir.exists():
        shutil.rmtree(output_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(output_dir)
    log.info("merged %s into %s -> %s", adapter_dir, spec, output_dir)
    return output_dir
