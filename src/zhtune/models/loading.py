"""Load a model and its tokenizer from any source, on the right device and precision."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from zhtune.config import ModelConfig
from zhtune.models.families import ModelFamily, detect_family

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    family: ModelFamily
    path: Path  # the local folder the weights came from
    name: str  # what the user asked for (hub id, builtin:..., path)


def pick_device(requested: str = "auto") -> torch.device:
    """The one device this process uses (``zhtune.devices.pick_device``)."""
    from zhtune.devices import pick_device as _pick

    return _pick(requested)


def pick_dtype(requested: str, device: torch.device) -> torch.dtype:
    """``model.dtype``; auto: bf16 on GPUs with native bf16, fp16 on older GPUs, fp32 on the CPU
    (``zhtune.devices.auto_precision`` decides)."""
    from zhtune.devices import auto_dtype

    if requested != "auto":
        return getattr(torch, requested)
    return auto_dtype(device)


def load_tokenizer(path: str | Path, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


def load_tokenizer_and_family(model_cfg) -> tuple[Any, ModelFamily, Path]:
    """The tokenizer and family of a model, without loading its weights."""
    from transformers import AutoConfig

    from zhtune.models.sources import resolve_model

    path = Path(resolve_model(model_cfg.name_or_path, revision=model_cfg.revision))
    tokenizer = load_tokenizer(path, model_cfg.trust_remote_code)
    config = AutoConfig.from_pretrained(str(path), trust_remote_code=model_cfg.trust_remote_code)
    family = detect_family(config, tokenizer, model_cfg.name_or_path, model_cfg.family)
    return tokenizer, family, path


def load_model(cfg: ModelConfig | str, for_training: bool = False) -> LoadedModel:
    """Resolve ``cfg.name_or_path`` to a local safetensors folder and load model + tokenizer."""
    from transformers import AutoModelForCausalLM

    from zhtune.models.cpu_math import resolve_math_kernels
    from zhtune.models.quantization import bitsandbytes_config
    from zhtune.models.sources import resolve_model

    resolve_math_kernels()  # before any model runs: MKL's first-call race, see cpu_math
    if isinstance(cfg, str):
        cfg = ModelConfig(name_or_path=cfg)
    path = resolve_model(cfg.name_or_path, revision=cfg.revision)
    device = pick_device(cfg.device)
    dtype = pick_dtype(cfg.dtype, device)
    tokenizer = load_tokenizer(path, cfg.trust_remote_code)
    # QLoRA (model.quantization): bitsandbytes layers are placed by a device map, never moved.
    quantization = bitsandbytes_config(cfg.quantization, dtype)
    placement = {"quantization_config": quantization, "device_map": {"": str(device)}} if quantization else {}
    model = AutoModelForCausalLM.from_pretrained(
        str(path), dtype=dtype, trust_remote_code=cfg.trust_remote_code, use_safetensors=True, **placement)
    if quantization is None:
        model.to(device)
    if not for_training:
        model.eval()
    family = detect_family(model.config, tokenizer, cfg.name_or_path, cfg.family)
    log.info("loaded %s (%s, %s%s, %s) from %s", cfg.name_or_path, family.name, dtype,
             "" if quantization is None else f", {cfg.quantization}", device, path)
    return LoadedModel(model=model, tokenizer=tokenizer, family=family, path=Path(path),
                       name=cfg.name_or_path)
