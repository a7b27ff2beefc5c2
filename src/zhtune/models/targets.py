"""LoRA targets, detected from the loaded model rather than hard-coded per architecture.

The original project's Qwen targets (``c_attn, c_proj, w1, w2``) are Qwen-1 module names; on a
Qwen2 model they match nothing and PEFT would train nothing useful. Here a target list that matches
no module is an error listing the names that do exist.
"""
from __future__ import annotations

import torch.nn as nn

ATTENTION_NAMES = {"q_proj", "k_proj", "v_proj", "o_proj", "qkv_proj", "c_attn", "wqkv", "wo"}
MLP_NAMES = {"gate_proj", "up_proj", "down_proj", "gate_up_proj", "c_fc", "w1", "w2", "w3"}
PRESETS = ("all", "attention", "mlp")


from zhtune.errors import UserError


class LoraTargetError(UserError, ValueError):
    pass


def _is_linear(module: nn.Module) -> bool:
    # transformers' Conv1D (GPT-2 style) is a linear layer with transposed weights.
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def linear_module_names(model: nn.Module) -> list[str]:
    """Leaf names of every linear layer in the decoder, the output head and embeddings excluded."""
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names: set[str] = set()
    for full_name, module in model.named_modules():
        if not _is_linear(module) or module is output:
            continue
        leaf = full_name.rsplit(".", 1)[-1]
        if leaf in {"lm_head", "embed_out", "score"}:
            continue
        names.add(leaf)
    return sorted(names)


def resolve_lora_targets(model: nn.Module, targets: str | list[str] = "all") -> list[str]:
    """Turn a preset or an explicit list into module names that exist in ``model``."""
    available = linear_module_names(model)
    if isinstance(targets, str):
        if targets == "all":
            chosen = available
        elif targets == "attention":
            chosen = [n for n in available if n in ATTENTION_NAMES]
        elif targets == "mlp":
            chosen = [n for n in available if n in MLP_NAMES]
        else:
            targets = [t.strip() for t in targets.split(",") if t.strip()]
            return resolve_lora_targets(model, targets)
        if not chosen:
            raise LoraTargetError(
                f"LoRA preset {targets!r} matches no linear layer; the model has: "
                f"{', '.join(available)}")
        return chosen
    missing = [t for t in targets if t not in available]
    if missing:
        hint = ""
        if set(missing) & {"c_attn", "c_proj", "w1", "w2"}:
            hint = (" (c_attn/c_proj/w1/w2 are Qwen-1 names; Qwen2/Qwen2.5 use q_proj, k_proj, "
                    "v_proj, o_proj, gate_proj, up_proj, down_proj)")
        raise LoraTargetError(
            f"LoRA targets {', '.join(missing)} match no linear layer of this model{hint}. "
            f"Linear layers that exist: {', '.join(available)}; presets: {', '.join(PRESETS)}")
    return list(targets)
