"""Several LoRA adapters on one base model, and evaluation at LoRA scales.

The base is loaded once; PEFT attaches every adapter under its own name and ``set_adapter``
switches between them. A LoRA scale multiplies each LoRA layer's ``scaling`` (alpha / r) for the
active adapter, so the update added to the base weights is ``scale * alpha/r * B A``: scale 0 is
the base model, 1 the adapter as trained. The original scaling is restored afterwards.
"""
from __future__ import annotations

import logging
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import torch

from zhtune.artifacts import read_adapter_meta, resolve_adapter_dir

log = logging.getLogger(__name__)


def adapter_names(paths: Sequence[str | Path], labels: Sequence[str] | None = None) -> list[str]:
    """Short unique names: ``labels`` when given (e.g. the experiment's name), else the training
    output folder's name (``runs/belle-r8/adapter`` -> ``belle-r8``)."""
    if labels is not None and len(labels) != len(paths):
        raise ValueError(f"{len(labels)} labels for {len(paths)} adapters")
    names: list[str] = []
    for i, raw in enumerate(paths):
        p = Path(raw).expanduser().resolve()
        stem = labels[i] if labels is not None else (p.parent.name if p.name == "adapter" else p.name)
        # PEFT adapter names become module keys: no "." (qwen2.5-r8 -> qwen2_5-r8).
        name = re.sub(r"[^A-Za-z0-9_-]+", "_", stem).strip("_-") or "adapter"
        unique, k = name, 2
        # PEFT stores adapters as submodule keys: "train", "eval", "forward" would shadow nn.Module.
        if hasattr(torch.nn.Module, unique):
            unique = name = f"{name}-adapter"
        while unique in names or unique == "base":
            unique, k = f"{name}-{k}", k + 1
        names.append(unique)
    return names


def _check_base(adapter_dir: Path, base_name: str | None) -> None:
    """Warn when the adapter says it was trained on a different base model."""
    if base_name is None:
        return
    trained_on = read_adapter_meta(adapter_dir).get("base_model")
    if trained_on and trained_on != base_name:
        log.warning("%s was trained on %s, evaluating it on %s", adapter_dir, trained_on, base_name)


def attach_adapters(model, paths: Sequence[str | Path], names: Sequence[str] | None = None,
                    base_name: str | None = None):
    """Load every adapter onto ``model`` (modified in place) -> (PeftModel, {name: adapter folder})."""
    from peft import PeftModel

    if not paths:
        raise ValueError("no adapters to attach")
    dirs = [resolve_adapter_dir(p) for p in paths]
    names = list(names) if names is not None else adapter_names(paths)
    for d in dirs:
        _check_base(d, base_name)
    peft_model = PeftModel.from_pretrained(model, str(dirs[0]), adapter_name=names[0], is_trainable=False)
    for name, d in zip(names[1:], dirs[1:]):
        peft_model.load_adapter(str(d), adapter_name=name, is_trainable=False)
    peft_model.eval()
    return peft_model, dict(zip(names, dirs))


def _lora_layers(model):
    from peft.tuners.lora import LoraLayer

    return [m for m in model.modules() if isinstance(m, LoraLayer)]


@contextmanager
def lora_scale(model, scale: float) -> Iterator[None]:
    """Multiply the active adapters' LoRA scaling by ``scale`` in every LoRA layer; restore on exit."""
    saved = []
    for layer in _lora_layers(model):
        for name in layer.active_adapters:
            if name in layer.scaling:
                saved.append((layer, name, layer.scaling[name]))
                layer.scaling[name] = layer.scaling[name] * scale
    if not saved and scale != 1.0:
        raise ValueError("no active LoRA layer to scale")
    if any(getattr(layer, "use_dora", {}).get(name) for layer, name, _ in saved) and scale != 1.0:
        log.warning("DoRA adapter: a scale multiplies only the LoRA direction update, not the magnitude")
    try:
        yield
    finally:
        for layer, name, value in saved:
            layer.scaling[name] = value


@contextmanager
def use_adapter(peft_model, name: str, scale: float = 1.0) -> Iterator[None]:
    """Make ``name`` the only active adapter, at ``scale``."""
    peft_model.set_adapter(name)
    with lora_scale(peft_model, scale):
        yield


def scale_label(name: str, scale: float) -> str:
    """``belle`` at scale 1, ``belle@scale-0.5`` otherwise (the eval folder's label)."""
    return name if scale == 1.0 else f"{name}@scale-{scale:g}"
