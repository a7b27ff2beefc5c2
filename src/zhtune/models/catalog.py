"""What a user does with models as a whole: pull one (and copy it somewhere), list what is cached,
describe one. The CLI's ``zhtune models`` is a thin layer over these three functions."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

PULL_RECORD = "zhtune_pull.json"


def pull_model(spec: str, output_dir: Optional[Path] = None, revision: Optional[str] = None,
               cache_dir: Optional[Path] = None, force: bool = False) -> tuple[Path, Optional[Path]]:
    """Resolve ``spec`` (download / convert once) and optionally copy it to ``output_dir/<name path>``,
    the layout the original project's ``download_model.py`` made. Returns (cache folder, copy or None)."""
    from zhtune.artifacts import utc_timestamp
    from zhtune.io import atomic_write_json
    from zhtune.models.sources import copy_model, output_subdir, resolve_model

    start = time.perf_counter()
    path = resolve_model(spec, revision=revision, cache_dir=cache_dir)
    copy = None
    if output_dir is not None:
        dest = Path(output_dir).expanduser() / output_subdir(spec)
        copy = copy_model(path, dest, force=force)
        atomic_write_json(copy / PULL_RECORD, {
            "spec": spec, "revision": revision, "resolved_from": str(path),
            "seconds": round(time.perf_counter() - start, 1),
            "created": utc_timestamp()})
    return path, copy


def list_models(cache_dir: Optional[Path] = None, include_hub: bool = True) -> dict:
    """The built-in models (cached or not) and every model in the zhtune (and HF) caches."""
    from zhtune.models.sources import BUILTINS, builtin_cache_entry, is_cached, list_cached_models

    builtins = []
    for b in BUILTINS.values():
        entry = builtin_cache_entry(b.name, cache_dir)
        builtins.append({"name": f"builtin:{b.name}", "cached": is_cached(entry),
                         "path": str(entry), "description": b.description})
    cached = [{"spec": c.spec, "source": c.source, "size_bytes": c.size_bytes, "path": str(c.path)}
              for c in list_cached_models(cache_dir, include_hub=include_hub)]
    return {"builtins": builtins, "cached": cached}


def model_info(spec: str, revision: Optional[str] = None, family: Optional[str] = None) -> dict:
    """Load the model on the CPU and describe it: family, parameters, linear layers, LoRA defaults."""
    from zhtune.config import ModelConfig
    from zhtune.models.loading import load_model
    from zhtune.models.targets import linear_module_names, resolve_lora_targets

    loaded = load_model(ModelConfig(name_or_path=spec, revision=revision, family=family, device="cpu"))
    model, fam, cfg = loaded.model, loaded.family, loaded.model.config
    return {
        "name": spec,
        "path": str(loaded.path),
        "model_type": cfg.model_type,
        "family": fam.name,
        "family_description": fam.description,
        "parameters": sum(p.numel() for p in model.parameters()),  # tied weights counted once
        "loaded_dtype": str(model.dtype).removeprefix("torch."),
        "layers": getattr(cfg, "num_hidden_layers", None),
        "hidden_size": getattr(cfg, "hidden_size", None),
        "vocab_size": getattr(cfg, "vocab_size", None),
        "tie_word_embeddings": bool(getattr(cfg, "tie_word_embeddings", False)),
        "chat_template": bool(getattr(loaded.tokenizer, "chat_template", None)),
        "linear_modules": linear_module_names(model),
        "default_lora_targets": resolve_lora_targets(model, "all"),
        "lora_defaults": {"rank": fam.lora_rank, "alpha": fam.lora_alpha,
                          "learning_rate": fam.learning_rate},
    }
