"""Attention for packed training rows, one causal attention per packed sample.

A packed row holds several samples, its position ids restarting at 0 for each (zhtune.data.sft).
transformers turns that into a (batch, 1, L, L) block-diagonal causal mask for sdpa, and the fused
kernel then computes all L x L scores of the row and masks most of them away: BELLE packs about
two samples into a row of 512 tokens, so 512² scores are computed where about 2 x 256² / 2 are
needed (the causal half of each sample's block). Here each sample's slice of the row runs sdpa with
``is_causal=True``: the same softmax over the same keys, a fraction of the work, no mask in memory.

The slices are taken with ``split`` and put back with ``cat``, so that the backward pass
concatenates gradients instead of adding each slice's gradient into a zero tensor of the row.

On a CUDA GPU with FlashAttention-2 installed (``flash_attn``) and bf16/fp16 tensors, the whole
batch runs as one ``flash_attn_varlen_func`` call over the samples' boundaries (``cu_seqlens``)
instead: no Python loop over samples, grouped key-value heads read in place. Either way the sample
boundaries are read from the device once per batch (``_Runs``), not once per layer: the 30 or so
layers of a forward pass, and their recomputation under gradient checkpointing, reuse them.

Anything else (an attention mask, a KV cache, sliding windows, attention dropout) runs
transformers' own sdpa, with the mask transformers builds.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

NAME = "zhtune_packed"


class _Runs:
    """The run lengths of the last position ids seen: the 30 or so layers of a forward pass read the
    same tensor, which is then read back from the device once, not once per layer. ``cu_seqlens``:
    the same boundaries as FlashAttention's cumulative offsets over the flattened batch, made once."""

    source: torch.Tensor | None = None
    version = -1
    lengths: list[list[int]] = []
    cu: tuple | None = None  # (lengths object, rows, device, cu_seqlens tensor, longest sample)

    @classmethod
    def get(cls, position_ids: torch.Tensor) -> list[list[int]]:
        if position_ids.is_inference():  # no version counter to tell a changed tensor by
            return sample_lengths(position_ids)
        if not (cls.source is position_ids and cls.version == position_ids._version):
            cls.source, cls.version = position_ids, position_ids._version
            cls.lengths = sample_lengths(position_ids)
        return cls.lengths

    @classmethod
    def cu_seqlens(cls, lengths: list[list[int]], rows: int, device) -> tuple[torch.Tensor, int]:
        if not (cls.cu and cls.cu[0] is lengths and cls.cu[1] == rows and cls.cu[2] == device):
            flat = [n for row in (lengths * rows if len(lengths) == 1 else lengths) for n in row]
            offsets = torch.tensor([0, *flat], dtype=torch.int32).cumsum(0, dtype=torch.int32)
            cls.cu = (lengths, rows, device, offsets.to(device, non_blocking=True), max(flat))
        return cls.cu[3], cls.cu[4]


@functools.lru_cache(maxsize=1)
def _flash_varlen():
    """FlashAttention-2's ``flash_attn_varlen_func`` when ``flash_attn`` is installed, else None."""
    try:
        from flash_attn import flash_attn_varlen_func
    except ImportError:
        return None
    return flash_attn_varlen_func


def _use_varlen(query: torch.Tensor) -> bool:
    """FlashAttention-2 runs on CUDA in half precision, head dimension up to 256."""
    return (query.is_cuda and query.dtype in (torch.float16, torch.bfloat16) and query.shape[-1] <= 256
            and _flash_varlen() is not None)


def sample_lengths(position_ids: torch.Tensor) -> list[list[int]]:
    """Per row, the lengths of its runs of consecutive positions: one per packed sample (right
    padding continues the last sample's positions, zhtune.train.collator, and so joins its run)."""
    pos = position_ids.detach().cpu()
    starts = torch.ones(pos.shape, dtype=torch.bool)
    starts[:, 1:] = pos[:, 1:] != pos[:, :-1] + 1
    lengths = []
    for row in starts:
        idx = row.nonzero().flatten().tolist() + [row.numel()]
        lengths.append([b - a for a, b in zip(idx, idx[1:])])
    return lengths


def packed_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                     position_ids=None, **kwargs):
    """transformers attention function (query (B, H, L, D), key/value (B, Hkv, L, D)) -> (B, L, H, D)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    plain = (attention_mask is not None or position_ids is None or dropout
             or query.shape[2] != key.shape[2] or position_ids.shape[-1] != query.shape[2]
             or kwargs.get("sliding_window") or kwargs.get("softcap") or kwargs.get("output_attentions"))
    if plain:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling,
                                      dropout=dropout, position_ids=position_ids, **kwargs)
    gqa = getattr(module, "num_key_value_groups", 1) > 1  # the fused kernels read shared heads
    lengths = _Runs.get(position_ids)
    if _use_varlen(query):
        return _varlen(query, key, value, lengths, scaling), None
    if len(lengths) == 1 and query.shape[0] > 1:  # one row of positions for the whole batch
        lengths = lengths * query.shape[0]
    if query.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        # On the CPU the flash kernel's backward pass is 2.3x slower in bf16 than in fp32 (SmolLM2's
        # shapes, measured), and q and k arrive in fp32 anyway (the rotary embedding is fp32): the
        # attention runs in fp32 there, and its output goes to the next matmul as autocast's would.
        with torch.autocast("cpu", enabled=False):
            return _per_sample(query.float(), key.float(), value.float(), lengths, scaling, gqa), None
    return _per_sample(query, key, value, lengths, scaling, gqa), None


def _per_sample(query, key, value, lengths: list[list[int]], scaling, gqa: bool) -> torch.Tensor:
    """(B, L, H, D): sdpa over each run of ``lengths`` of each row, causal."""
    pieces = []
    for q, k, v, runs in zip(query.split(1), key.split(1), value.split(1), lengths):
        # Pieces as (1, l, H, D) views: the cat writes the (B, L, H, D) layout the output
        # projection reads, in one copy.
        pieces += [F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, scale=scaling,
                                                  enable_gqa=gqa).transpose(1, 2)
                   for qs, ks, vs in zip(q.split(runs, 2), k.split(runs, 2), v.split(runs, 2))]
    return torch.cat(pieces, dim=1).view(query.shape[0], query.shape[2], *pieces[0].shape[2:])


def _varlen(query, key, value, lengths: list[list[int]], scaling) -> torch.Tensor:
    """(B, L, H, D): FlashAttention-2 over every sample of the flattened batch in one call."""
    b, h, length, d = query.shape
    cu, longest = _Runs.cu_seqlens(lengths, b, query.device)
    flat = [t.transpose(1, 2).reshape(b * length, t.shape[1], d) for t in (query, key, value)]
    out = _flash_varlen()(*flat, cu, cu, longest, longest, dropout_p=0.0, softmax_scale=scaling, causal=True)
    return out.view(b, length, h, d)


def packed_mask(*args, attention_mask=None, q_length=None, kv_length=None, q_offset=0, kv_offset=0,
                local_size=None, **kwargs):
    """The mask builder under this attention: none where ``packed_attention`` takes its own path
    (no attention mask, no cache, no sliding window), else transformers' sdpa mask."""
    from transformers.masking_utils import sdpa_mask

    if attention_mask is None and local_size is None and q_length == kv_length and not q_offset and not kv_offset:
        return None
    return sdpa_mask(*args, attention_mask=attention_mask, q_length=q_length, kv_length=kv_length,
                     q_offset=q_offset, kv_offset=kv_offset, local_size=local_size, **kwargs)


def supports_packed_attention(config) -> bool:
    """sdpa models whose every layer attends in full (no sliding window, no soft-capping)."""
    layer_types = getattr(config, "layer_types", None) or ["full_attention"]
    return (config._attn_implementation == "sdpa" and set(layer_types) == {"full_attention"}
            and not getattr(config, "use_sliding_window", False)
            and getattr(config, "attn_logit_softcapping", None) is None)


def use_packed_attention(model) -> bool:
    """Switch ``model`` (its config, shared by the PEFT wrapper) to ``packed_attention`` if it
    supports it; returns whether it did."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    if not supports_packed_attention(model.config):
        return False
    AttentionInterface.register(NAME, packed_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, packed_mask)
    model.config._attn_implementation = NAME
    return True
