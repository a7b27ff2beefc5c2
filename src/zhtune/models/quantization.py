"""QLoRA: the base model's linear layers stored in 4 bit (NF4) or 8 bit (LLM.int8) by bitsandbytes.

``model.quantization`` picks it; loading (``zhtune.models.loading``) passes transformers'
``BitsAndBytesConfig`` and places the model with a ``device_map`` (bitsandbytes models cannot be
moved with ``.to``); training prepares it with PEFT's ``prepare_model_for_kbit_training`` as the
ecosystem does (everything frozen, the non-quantised tensors in fp32). The LoRA adapter itself is
an ordinary adapter: it evaluates on the quantised base and on the unquantised one.

bitsandbytes >= 0.46 runs on the CPU too (tests run there); on a GPU it is the usual CUDA build.
Install with ``pip install 'zhtune[qlora]'``.
"""
from __future__ import annotations

import warnings

import torch

from zhtune.errors import UserError

QUANTIZATIONS = ("none", "nf4", "int8")


def bitsandbytes_config(quantization: str, compute_dtype: torch.dtype):
    """transformers' ``BitsAndBytesConfig`` for ``model.quantization`` (None for "none").

    nf4: 4-bit NormalFloat with double quantisation (the QLoRA paper's recipe), matmuls in
    ``compute_dtype`` (the training precision). int8: LLM.int8 with its default outlier threshold.
    """
    if quantization == "none":
        return None
    if quantization not in QUANTIZATIONS:
        raise UserError(f"model.quantization={quantization!r}; expected one of {', '.join(QUANTIZATIONS)}")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise UserError(f"model.quantization={quantization} needs bitsandbytes >= 0.46 "
                        "(pip install 'zhtune[qlora]')") from None
    from transformers import BitsAndBytesConfig

    if quantization == "nf4":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                  bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute_dtype)
    # LLM.int8 casts fp32 inputs to fp16 for its own matmul and says so at every call.
    warnings.filterwarnings("ignore", message="MatMul8bitLt: inputs will be cast")
    return BitsAndBytesConfig(load_in_8bit=True)


def is_quantized_linear(module: torch.nn.Module) -> bool:
    """A bitsandbytes ``Linear4bit`` / ``Linear8bitLt`` (the base layer a QLoRA adapter wraps)."""
    try:
        import bitsandbytes as bnb
    except ImportError:
        return False
    return isinstance(module, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt))


def is_quantized(model: torch.nn.Module) -> bool:
    """Whether any linear layer of ``model`` (a PEFT model too) is stored by bitsandbytes."""
    return any(is_quantized_linear(m) for m in model.modules())


def prepare_for_training(model):
    """PEFT's ``prepare_model_for_kbit_training``: every weight frozen, norms, embeddings and head in
    fp32. Gradient checkpointing is left to the trainer (``train.gradient_checkpointing``), which
    enables it non-reentrant: no input gradients are needed for it."""
    from peft import prepare_model_for_kbit_training

    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
