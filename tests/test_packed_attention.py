"""Packed rows attend per sample (zhtune.train.packed_attention) exactly as transformers' sdpa does
with the block-diagonal mask it derives from the position ids; everything else is sdpa's own."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, Qwen2Config
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

from zhtune.train.packed_attention import (NAME, packed_attention, packed_mask, sample_lengths,
                                           supports_packed_attention, use_packed_attention)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class _Module:  # what the attention functions read of the attention module
    num_key_value_groups = 3
    is_causal = True
    training = True


def _block_causal(position_ids: torch.Tensor) -> torch.Tensor:
    """(B, 1, L, L) bool: a position sees the earlier positions of its own sample."""
    sample = torch.cumsum(torch.cat([torch.ones_like(position_ids[:, :1]),
                                     (position_ids[:, 1:] != position_ids[:, :-1] + 1).long()], 1), 1)
    same = sample[:, :, None] == sample[:, None, :]
    return (same & torch.ones_like(same[0]).tril())[:, None]


def test_sample_lengths_follow_restarting_positions():
    pos = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3], [0, 1, 2, 3, 4, 5, 6, 7, 8],
                        [0, 1, 2, 3, 0, 1, 2, 3, 4]])
    assert sample_lengths(pos) == [[3, 2, 4], [9], [4, 5]]
    assert sample_lengths(torch.tensor([[5, 6, 7]])) == [[3]]  # a row that starts mid-sample


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_attention_equals_masked_sdpa_in_values_and_gradients(dtype):
    torch.manual_seed(0)
    pos = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 0, 1, 2, 3, 4, 5], list(range(13))])
    q = torch.randn(2, 6, 13, 8, dtype=dtype, requires_grad=True)
    k = torch.randn(2, 2, 13, 8, dtype=dtype, requires_grad=True)
    v = torch.randn(2, 2, 13, 8, dtype=dtype, requires_grad=True)
    grad = torch.randn(2, 13, 6, 8, dtype=dtype)
    got, _ = packed_attention(_Module(), q, k, v, None, scaling=0.3, position_ids=pos)
    got_grads = torch.autograd.grad(got, (q, k, v), grad)
    want, _ = sdpa_attention_forward(_Module(), q, k, v, _block_causal(pos), scaling=0.3)
    want_grads = torch.autograd.grad(want, (q, k, v), grad)
    assert got.shape == (2, 13, 6, 8) and got.is_contiguous()
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(got, want, **tol)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, **tol)
    # one row of positions for the whole batch, as a model called without a batch of them gets
    one, _ = packed_attention(_Module(), q, k, v, None, scaling=0.3, position_ids=pos[:1])
    torch.testing.assert_close(one, sdpa_attention_forward(_Module(), q, k, v, _block_causal(pos[:1]),
                                                           scaling=0.3)[0], **tol)


def test_anything_but_packed_rows_is_sdpa_with_its_mask():
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 3, 5, 4), torch.randn(1, 1, 5, 4), torch.randn(1, 1, 5, 4)
    pos = torch.tensor([[0, 1, 0, 1, 2]])
    mask = torch.ones(1, 1, 5, 5, dtype=torch.bool).tril()
    # an attention mask (padded batches): sdpa with that mask, whatever the positions say
    torch.testing.assert_close(packed_attention(_Module(), q, k, v, mask, position_ids=pos)[0],
                               sdpa_attention_forward(_Module(), q, k, v, mask)[0])
    # no position ids: sdpa, causal over the whole row
    torch.testing.assert_close(packed_attention(_Module(), q, k, v, None)[0],
                               sdpa_attention_forward(_Module(), q, k, v, mask)[0])
    # decoding with a cache (queries shorter than keys) is sdpa's, masks included
    q1 = q[:, :, -1:]
    torch.testing.assert_close(packed_attention(_Module(), q1, k, v, None, position_ids=pos[:, -1:])[0],
                               sdpa_attention_forward(_Module(), q1, k, v, None)[0])
    # the mask builder: none where the packed path runs, transformers' sdpa mask elsewhere
    common = dict(batch_size=1, q_length=5, kv_length=5, device="cpu")
    assert packed_mask(**common, attention_mask=None) is None
    padding = torch.tensor([[0, 1, 1, 1, 1]])
    torch.testing.assert_close(packed_mask(**common, attention_mask=padding),
                               sdpa_mask(**common, attention_mask=padding))
    assert packed_mask(**common, attention_mask=None, local_size=2) is not None  # sliding window
    decoding = dict(batch_size=1, q_length=2, kv_length=5, q_offset=3, device="cpu",
                    attention_mask=torch.tensor([[0, 1, 1, 1, 1]]))
    torch.testing.assert_close(packed_mask(**decoding), sdpa_mask(**decoding))


def test_models_switch_only_where_every_layer_attends_in_full(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), attn_implementation="sdpa")
    assert use_packed_attention(model) and model.config._attn_implementation == NAME
    eager = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), attn_implementation="eager")
    assert not use_packed_attention(eager) and eager.config._attn_implementation == "eager"
    sliding = Qwen2Config(use_sliding_window=True, sliding_window=8, max_window_layers=0,
                          num_hidden_layers=2, attn_implementation="sdpa")
    assert "sliding_attention" in sliding.layer_types and not supports_packed_attention(sliding)


def test_a_switched_model_scores_and_generates_as_sdpa(tiny_model_dir):
    """Padded batches (evaluation, probes) and generation with a cache take sdpa's path."""
    torch.manual_seed(0)
    ref = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), attn_implementation="sdpa").eval()
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), attn_implementation="sdpa").eval()
    use_packed_attention(model)
    ids = torch.randint(3, 100, (2, 9))
    attention_mask = torch.ones_like(ids)
    attention_mask[1, :3] = 0  # left padding
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids, attention_mask=attention_mask).logits,
                                   ref(input_ids=ids, attention_mask=attention_mask).logits)
        torch.testing.assert_close(model(input_ids=ids).logits, ref(input_ids=ids).logits)
        kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
        assert torch.equal(model.generate(ids, attention_mask=attention_mask, **kw),
                           ref.generate(ids, attention_mask=attention_mask, **kw))


def test_under_cpu_autocast_the_attention_runs_in_fp32():
    """Faster on the CPU than bf16 (its backward pass) and at least as exact: the output is the
    fp32 attention of the (upcast) inputs."""
    torch.manual_seed(0)
    pos = torch.tensor([[0, 1, 2, 0, 1, 2, 3]])
    q = torch.randn(1, 6, 7, 8)
    k, v = torch.randn(1, 2, 7, 8).bfloat16(), torch.randn(1, 2, 7, 8).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, _ = packed_attention(_Module(), q, k, v, None, scaling=0.3, position_ids=pos)
    want, _ = packed_attention(_Module(), q, k.float(), v.float(), None, scaling=0.3, position_ids=pos)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want)


def _flash_varlen_on_cpu(q, k, v, cu_q, cu_k, max_q, max_k, dropout_p=0.0, softmax_scale=None, causal=False):
    """flash_attn_varlen_func's contract on the CPU: q (total, H, D), k and v (total, Hkv, D), int32
    cumulative offsets, causal within each sample -> (total, H, D)."""
    assert q.dim() == 3 and cu_q.dtype == torch.int32 and torch.equal(cu_q, cu_k) and causal
    assert max_q == max_k == int((cu_q[1:] - cu_q[:-1]).max()) and dropout_p == 0.0
    bounds = cu_q.tolist()
    out = [F.scaled_dot_product_attention(*(t[a:b].transpose(0, 1)[None] for t in (q, k, v)), is_causal=True,
                                          scale=softmax_scale, enable_gqa=True)[0].transpose(0, 1)
           for a, b in zip(bounds, bounds[1:])]
    return torch.cat(out)


def test_flash_varlen_path_equals_masked_sdpa(monkeypatch):
    """The FlashAttention-2 path (layout, cu_seqlens over the flattened batch, one row of positions
    for a batch), run on the CPU with a stand-in for flash_attn_varlen_func."""
    from zhtune.train import packed_attention as pa

    monkeypatch.setattr(pa, "_use_varlen", lambda q: True)
    monkeypatch.setattr(pa, "_flash_varlen", lambda: _flash_varlen_on_cpu)
    torch.manual_seed(0)
    pos = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 0, 1, 2, 3, 4, 5], list(range(13))])
    q = torch.randn(2, 6, 13, 8, requires_grad=True)
    k, v = torch.randn(2, 2, 13, 8, requires_grad=True), torch.randn(2, 2, 13, 8, requires_grad=True)
    grad = torch.randn(2, 13, 6, 8)
    for positions in (pos, pos[:1]):
        got, _ = packed_attention(_Module(), q, k, v, None, scaling=0.3, position_ids=positions)
        want, _ = sdpa_attention_forward(_Module(), q, k, v, _block_causal(positions), scaling=0.3)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        for g, w in zip(torch.autograd.grad(got, (q, k, v), grad), torch.autograd.grad(want, (q, k, v), grad)):
            torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)
    assert pa._Runs.cu[3].tolist() == [0, 4, 7, 13, 17, 20, 26]  # pos[:1] for both rows


def test_sample_boundaries_are_read_once_per_batch(tiny_llama_dir, monkeypatch):
    """One device-to-host read of the position ids per training step, whatever the number of
    layers, and none more when gradient checkpointing recomputes every layer."""
    import contextlib

    from test_fused import _packed_batch, _peft_model
    from zhtune.train import packed_attention as pa
    from zhtune.train.fused import labelled_loss

    reads = []
    real = pa.sample_lengths
    monkeypatch.setattr(pa, "sample_lengths", lambda p: reads.append(1) or real(p))
    model = _peft_model(tiny_llama_dir, fused=True)
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    assert model.config.num_hidden_layers > 1
    for step in range(2):
        inputs = _packed_batch(vocab=200)
        labels = inputs.pop("labels")
        loss, n, _ = labelled_loss(model, model.get_output_embeddings(), inputs, labels, contextlib.nullcontext())
        loss.backward()
        assert len(reads) == step + 1
