"""Attention over a shared few-shot prefix without a copy of it per question.

Every question of a subject starts with the same few-shot prefix. Its keys and values are computed
once (batch 1); a batch of questions then attends to them *and* to its own tokens. Handing the
model a cache expanded to the batch would not help: the cache appends each question's keys to the
prefix's, a concatenation that copies the whole prefix once per question and layer (MMLU 5-shot:
prefixes of 2,500 tokens x a batch of questions). Here the two parts of the softmax are computed
separately and merged through their log-sum-exp, as Hydragen and cascade inference do:

    out = (e^{s_p} o_p + e^{s_q} o_q) / (e^{s_p} + e^{s_q})

with o the softmax output over one part's keys and s the log-sum-exp of its scores (torch's fused
kernels return both: the flash kernel on the CPU, the memory-efficient one on CUDA). The prefix
part folds the batch into the rows of one attention per key-value head, so the prefix is read,
never copied.

Used through ``attend(body)`` (the model runs this attention while inside it) and the
``context=SharedContext(...)`` keyword of a decoder forward pass, which transformers hands down to
every attention call. Without that keyword the attention is transformers' own sdpa.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

NAME = "zhtune_shared_prefix"
# Score elements (rows x keys x heads) of the prefix part computed at once (the plain computation:
# 2^25 fp32 = 128 MB; the CPU's flash kernel works in blocks anyway), whatever the batch.
CHUNK_ELEMENTS = 2**25

KV = tuple[torch.Tensor, torch.Tensor]


@dataclass
class SharedContext:
    """What the questions of one forward pass attend to before (and besides) their own tokens.

    ``prefix``: per layer, keys and values (1, kv heads, P, head dim) every row sees in full.
    ``rows`` and ``rows_mask``: per layer (B, kv heads, C, head dim), each row's own earlier tokens
    (a cloze option after its question), right-padded; ``rows_mask`` (B, C) marks the real ones.
    The row's new tokens see themselves causally. Padding at the end of a row sees garbage, which is
    never read: the scorers take each row's last *real* position.
    ``keep``: when a list, each layer's new keys and values are appended to it (the question's,
    for the options' pass)."""

    prefix: list[KV] | None = None
    rows: list[KV] | None = None
    rows_mask: torch.Tensor | None = None
    keep: list[KV] | None = field(default=None, repr=False)


def _manual(q, k, v, scaling: float, causal: bool, mask) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q k^T) v and the log-sum-exp of each row, the softmax in fp32."""
    scores = torch.matmul(q, k.transpose(-1, -2)).float().mul_(scaling)
    if causal:
        scores.masked_fill_(torch.ones(scores.shape[-2:], dtype=torch.bool, device=q.device).triu_(1),
                            float("-inf"))
    if mask is not None:
        scores.masked_fill_(~mask, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    weights = scores.sub_(lse.unsqueeze(-1)).exp_()
    return torch.matmul(weights.to(v.dtype), v), lse


def _fused_kernel(q: torch.Tensor) -> str | None:
    """Which of torch's fused kernels that also return the log-sum-exp runs here: "cpu" (the CPU's
    flash kernel), "cuda" (the memory-efficient kernel), None: the plain computation (tests choose)."""
    return q.device.type if q.device.type in ("cpu", "cuda") else None


def _efficient_kernel(q, k, v, bias, causal: bool, scale: float):
    """torch's memory-efficient attention (CUDA) -> (output, log-sum-exp padded to 32 rows)."""
    out, lse, _, _ = torch.ops.aten._scaled_dot_product_efficient_attention(
        q, k, v, bias, True, 0.0, causal, scale=scale)
    return out, lse


def _efficient(q, k, v, scaling: float, causal: bool, mask):
    """(output, log-sum-exp) through ``_efficient_kernel``, which wants as many key-value heads as
    query heads: the query heads of a key-value head are folded into its rows (q (B, H, L, D) ->
    (B, Hkv, g L, D), a view of q's heads, no copy of k or v), so a causal mask becomes a bias over
    the folded rows (row r is position r mod L). Masks go in as an additive bias in q's dtype whose
    rows start on 16-element boundaries (the kernel's alignment; sdpa pads its masks the same way).
    No fp32 score matrix is formed, and the log-sum-exp comes back in fp32."""
    b, h, length, d = q.shape
    hkv, keys = k.shape[1], k.shape[2]
    g = h // hkv
    rows = q.reshape(b, hkv, g * length, d)
    allowed = mask
    if causal and g > 1:
        position = torch.arange(length, device=q.device).repeat(g)
        own = torch.arange(keys, device=q.device)[None, :] <= position[:, None]
        allowed = own if allowed is None else allowed & own
    bias = None
    if allowed is not None:
        shape = torch.broadcast_shapes(allowed.shape, (1, 1, 1, keys))
        bias = torch.zeros(*shape[:-1], keys + (-keys % 16), dtype=q.dtype, device=q.device)[..., :keys]
        bias.masked_fill_(~allowed.expand(shape), float("-inf"))
        bias = bias.expand(b, hkv, g * length, keys)
    out, lse = _efficient_kernel(rows, k, v, bias, causal and g == 1, scaling)
    return out.reshape(b, h, length, d), lse[..., :g * length].reshape(b, h, length)


def _attention(q, k, v, scaling: float, causal: bool = False, mask=None):
    """(output, log-sum-exp) of q (B, H, L, D) over k, v (B, Hkv, Lk, D), H a multiple of Hkv
    (grouped-query attention); ``mask`` (bool, broadcast to the scores): True where a key may be
    seen. On the CPU, torch's fused flash kernel, which returns the log-sum-exp and reads each
    key-value head for its query heads without a copy; on CUDA its memory-efficient kernel
    (``_efficient``); elsewhere the plain computation."""
    k, v = k.to(q.dtype), v.to(q.dtype)  # under autocast the parts can come in different dtypes
    kernel = _fused_kernel(q)
    if kernel == "cuda":
        return _efficient(q, k, v, scaling, causal, mask)
    if kernel == "cpu":
        if mask is not None:  # the kernel takes an additive mask of the query's dtype
            mask = torch.zeros(mask.shape, dtype=q.dtype).masked_fill_(~mask, float("-inf"))
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q, k, v, 0.0, causal, attn_mask=mask, scale=scaling)
        return out, lse
    g = q.shape[1] // k.shape[1]
    if g > 1:  # repeat_interleave copies even once; the prefix part's folded rows have g == 1
        k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    return _manual(q, k, v, scaling, causal, mask)


def _prefix_part(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scaling: float):
    """q (B, H, S, D) over one shared k, v (1, Hkv, P, D): the batch and the query heads of a
    key-value head folded into the rows of one attention per key-value head, chunked."""
    b, h, s, d = q.shape
    hkv = k.shape[1]
    rows = q.reshape(b, hkv, h // hkv * s, d).transpose(0, 1).reshape(1, hkv, -1, d)
    step = max(1, CHUNK_ELEMENTS // (hkv * k.shape[2]))
    pieces = [_attention(rows[:, :, i:i + step], k, v, scaling) for i in range(0, rows.shape[2], step)]
    out = torch.cat([o for o, _ in pieces], dim=2)
    lse = torch.cat([l for _, l in pieces], dim=2)
    return (out.reshape(hkv, b, h // hkv * s, d).transpose(0, 1).reshape(b, h, s, d),
            lse.reshape(hkv, b, h // hkv * s).transpose(0, 1).reshape(b, h, s))


def _merge(parts) -> torch.Tensor:
    """Outputs of softmaxes over disjoint key sets, merged into the softmax over their union."""
    lse = torch.logsumexp(torch.stack([l for _, l in parts]), dim=0)
    out = None
    for o, l in parts:
        term = o.float() * (l - lse).exp_().unsqueeze(-1)
        out = term if out is None else out.add_(term)
    return out


def shared_prefix_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                            context: SharedContext | None = None, **kwargs):
    """transformers attention function: sdpa, or with ``context`` the merged attention above."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if context is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling,
                                      dropout=dropout, **kwargs)
    if kwargs.get("sliding_window") or kwargs.get("softcap"):
        raise NotImplementedError(f"{type(module).__name__}: sliding-window or soft-capped attention "
                                  "is not supported by the shared-prefix scorer")
    layer = module.layer_idx
    if context.keep is not None:
        context.keep.append((key, value))
    scaling = query.shape[3] ** -0.5 if scaling is None else scaling
    parts = [_attention(query, key, value, scaling, causal=True)]
    if context.prefix is not None:
        parts.append(_prefix_part(query, *context.prefix[layer], scaling))
    if context.rows is not None:
        rk, rv = context.rows[layer]
        parts.append(_attention(query, rk, rv, scaling, mask=context.rows_mask.bool()[:, None, None, :]))
    out = _merge(parts).to(query.dtype)
    return out.transpose(1, 2).contiguous(), None


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(NAME, shared_prefix_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)


@contextmanager
def attend(body):
    """Inside: ``body`` (a decoder) runs ``shared_prefix_attention``; its own setting after."""
    _register()
    config = body.config
    before = config._attn_implementation
    config._attn_implementation = NAME
    try:
        yield
    finally:
        config._attn_implementation = before
