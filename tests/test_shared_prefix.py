"""The shared-prefix attention equals plain attention over prefix + rows' tokens + own tokens."""
import pytest
import torch

from zhtune.eval import shared_prefix
from zhtune.eval.shared_prefix import SharedContext, shared_prefix_attention


class _Module(torch.nn.Module):
    layer_idx = 0
    num_key_value_groups = 3
    is_causal = True
    training = False


def _reference(q, k, v, allowed):
    """softmax(q k^T / sqrt(d) masked) v with the key-value heads repeated: (B, S, H, D)."""
    g = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)
    scores = (q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5
    scores = scores.masked_fill(~allowed, float("-inf"))
    return (torch.softmax(scores, dim=-1) @ v).transpose(1, 2)


def _efficient_on_cpu(q, k, v, bias, causal, scale):
    """What ``torch.ops.aten._scaled_dot_product_efficient_attention`` computes and demands, on the
    CPU: as many key-value heads as query heads, an additive bias in q's dtype with 16-aligned
    rows, and the log-sum-exp padded to a multiple of 32 rows (padding is garbage)."""
    assert q.shape[1] == k.shape[1] == v.shape[1], "the kernel takes no grouped-query heads"
    scores = (q @ k.transpose(-1, -2)).float() * scale
    if bias is not None:
        assert bias.dtype == q.dtype and bias.stride(-1) == 1 and bias.stride(-2) % 16 == 0
        assert bias.shape == scores.shape
        scores = scores + bias.float()
    if causal:
        scores = scores.masked_fill(torch.ones(scores.shape[-2:], dtype=torch.bool).triu(1), float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    out = torch.softmax(scores, dim=-1).to(v.dtype) @ v
    padded = torch.full((*lse.shape[:-1], -(-lse.shape[-1] // 32) * 32), float("nan"))
    padded[..., :lse.shape[-1]] = lse
    return out, padded


@pytest.mark.parametrize("heads", [6, 2])  # grouped-query (3 query heads per key-value head), MHA
@pytest.mark.parametrize("kernel", ["cpu flash", "cuda efficient", "plain"])  # plain: other devices
@pytest.mark.parametrize("chunk", [2**25, 7])  # 7: the prefix part in many row chunks
def test_prefix_rows_and_own_tokens_merge_to_plain_attention(monkeypatch, chunk, kernel, heads):
    monkeypatch.setattr(shared_prefix, "CHUNK_ELEMENTS", chunk)
    if kernel == "plain":
        monkeypatch.setattr(shared_prefix, "_fused_kernel", lambda q: None)
    if kernel == "cuda efficient":  # the CUDA path's folding, bias and slicing, run on the CPU
        monkeypatch.setattr(shared_prefix, "_fused_kernel", lambda q: "cuda")
        monkeypatch.setattr(shared_prefix, "_efficient_kernel", _efficient_on_cpu)
    torch.manual_seed(0)
    b, h, hkv, d, p, c, s = 3, heads, 2, 8, 11, 5, 4
    q = torch.randn(b, h, s, d)
    k, v = torch.randn(b, hkv, s, d), torch.randn(b, hkv, s, d)
    pk, pv = torch.randn(1, hkv, p, d), torch.randn(1, hkv, p, d)
    rk, rv = torch.randn(b, hkv, c, d), torch.randn(b, hkv, c, d)
    rows_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.bool)
    context = SharedContext(prefix=[(pk, pv)], rows=[(rk, rv)], rows_mask=rows_mask, keep=[])

    got, weights = shared_prefix_attention(_Module(), q, k, v, None, context=context)

    keys = torch.cat([pk.expand(b, -1, -1, -1), rk, k], dim=2)
    values = torch.cat([pv.expand(b, -1, -1, -1), rv, v], dim=2)
    causal = torch.ones(s, s, dtype=torch.bool).tril()
    allowed = torch.cat([torch.ones(b, s, p, dtype=torch.bool),
                         rows_mask[:, None, :].expand(b, s, c), causal.expand(b, s, s)], dim=2)
    want = _reference(q, keys, values, allowed[:, None])
    assert weights is None and got.shape == (b, s, h, d)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert context.keep == [(k, v)]  # the new keys and values, for a later pass


def test_without_context_it_is_sdpa():
    torch.manual_seed(1)
    q, k, v = torch.randn(2, 4, 5, 8), torch.randn(2, 4, 5, 8), torch.randn(2, 4, 5, 8)
    module = _Module()
    module.num_key_value_groups = 1
    got, _ = shared_prefix_attention(module, q, k, v, None)
    want = _reference(q, k, v, torch.ones(5, 5, dtype=torch.bool).tril())
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_attend_restores_the_models_attention(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    before = model.config._attn_implementation
    with pytest.raises(RuntimeError), shared_prefix.attend(model.model):
        assert model.config._attn_implementation == shared_prefix.NAME
        raise RuntimeError("scoring failed")
    assert model.config._attn_implementation == before
