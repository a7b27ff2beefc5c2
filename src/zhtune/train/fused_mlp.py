"""The gated MLP of Llama and Qwen2 with one saved tensor fewer: ``silu(gate) * up``, recomputed.

``down(silu(gate(x)) * up(x))`` under autograd keeps three (tokens x intermediate) tensors for
the product: ``gate(x)`` for the SiLU's backward, ``silu(gate(x))`` and ``up(x)`` for the
product's. ``SiluMul`` keeps ``gate(x)`` and ``up(x)`` and computes the SiLU again in the backward
pass: SmolLM2, 2 rows of 512 tokens, fp32, 6.3 MB less per layer (189 MB over 30 layers) for one
element-wise pass more. Same values and gradients (tests/test_fused.py).
"""
from __future__ import annotations

import types

import torch
import torch.nn.functional as F


class SiluMul(torch.autograd.Function):
    """silu(gate) * up."""

    @staticmethod
    def forward(ctx, gate, up):
        ctx.save_for_backward(gate, up)
        return F.silu(gate).mul_(up)

    @staticmethod
    def backward(ctx, grad):
        gate, up = ctx.saved_tensors
        grad_up = grad * F.silu(gate) if ctx.needs_input_grad[1] else None
        grad_gate = torch.ops.aten.silu_backward(grad * up, gate) if ctx.needs_input_grad[0] else None
        return grad_gate, grad_up


def _fused_mlp_forward(self, x):
    return self.down_proj(SiluMul.apply(self.gate_proj(x), self.up_proj(x)))


def fuse_gated_mlps(model) -> int:
    """Route the forward pass of every Llama-style gated SiLU MLP of ``model`` through ``SiluMul``;
    returns how many. Only modules whose forward is exactly ``down(silu(gate(x)) * up(x))`` (by
    class, see ``GATED_SILU_MLPS``) with a SiLU activation are touched."""
    n = 0
    for module in model.modules():
        if (type(module).__name__ in GATED_SILU_MLPS
                and type(getattr(module, "act_fn", None)).__name__ in ("SiLU", "SiLUActivation")):
            module.forward = types.MethodType(_fused_mlp_forward, module)
            n += 1
    return n


# transformers classes whose forward is down_proj(act_fn(gate_proj(x)) * up_proj(x)).
GATED_SILU_MLPS = frozenset({"LlamaMLP", "Qwen2MLP", "Qwen3MLP", "MistralMLP"})
