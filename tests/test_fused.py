"""The memory-lean training pieces compute what PEFT and HF compute: loss on labelled positions
(chunked head + cross-entropy), fused LoRA linear, and the training precision."""
from __future__ import annotations

import contextlib

import pytest
import torch

from zhtune.config import load_config
from zhtune.errors import UserError
from zhtune.train.collator import PackedCollator
from zhtune.train.fused import (LoraLinearFunction, dropout_mask, keep_probability, labelled_loss,
                                linear_cross_entropy, shifted_targets, supports_labelled_loss)
from zhtune.train.lora import build_peft_model, lora_settings
from zhtune.train.trainer import cpu_supports_bf16, resolve_precision


# Tiny models on a shared 2-core machine: one thread (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _packed_batch(vocab: int) -> dict:
    """Two right-padded rows; the first packs three samples (positions restart), prompts masked."""
    g = torch.Generator().manual_seed(0)

    def sample(n, prompt):
        ids = torch.randint(3, vocab, (n,), generator=g).tolist()
        return ids, [-100] * prompt + ids[prompt:]

    rows = []
    for parts in ([(9, 3), (14, 5), (6, 2)], [(20, 8)]):
        ids, labels, pos = [], [], []
        for n, prompt in parts:
            s_ids, s_labels = sample(n, prompt)
            ids += s_ids
            labels += [-100] + s_labels[1:]  # as zhtune.data.sft.build_rows
            pos += list(range(n))
        rows.append({"input_ids": ids, "labels": labels, "position_ids": pos})
    batch = PackedCollator(pad_token_id=0)(rows)
    batch.pop("row_tokens")
    return batch


def _peft_model(model_dir, fused: bool, dropout: float = 0.0):
    from transformers import AutoModelForCausalLM

    from zhtune.models.families import detect_family

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    cfg = load_config(None, [f"model.name_or_path={model_dir}", "lora.rank=4", "lora.alpha=8",
                             f"lora.dropout={dropout}"])
    family = detect_family(base.config, None, str(model_dir), None)
    model, _ = build_peft_model(base, cfg, lora_settings(cfg, family), fused=fused)
    # PEFT starts B at zero, which would hide mistakes in the gradient of A: same random B in both.
    g = torch.Generator().manual_seed(1)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data = torch.randn(p.shape, generator=g) * 0.05
    return model.train()


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_labelled_loss_and_fused_lora_match_hf(tiny_model_dir):
    """HF's loss (full logits, PEFT's LoRA) == head and CE on labelled positions + fused LoRA,
    in value (1e-5) and in every LoRA gradient, on packed rows with restarting positions."""
    batch = _packed_batch(vocab=200)
    reference = _peft_model(tiny_model_dir, fused=False)
    ref_loss = reference(**batch).loss
    ref_loss.backward()

    model = _peft_model(tiny_model_dir, fused=True)
    assert supports_labelled_loss(model)
    inputs = dict(batch)
    labels = inputs.pop("labels")
    loss_sum, n, outputs = labelled_loss(model, model.get_output_embeddings(), inputs, labels,
                                         contextlib.nullcontext())
    assert n == int((labels[:, 1:] != -100).sum())
    assert outputs.logits.numel() == 0  # no logits at all were made by the model
    loss = loss_sum / n
    loss.backward()
    torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=1e-5)
    ref_grads, grads = _grads(reference), _grads(model)
    assert set(grads) == set(ref_grads) and len(grads) > 0
    for name, g in grads.items():
        assert g.abs().max() > 0, name
        torch.testing.assert_close(g, ref_grads[name], atol=1e-5, rtol=1e-4, msg=name)


def test_linear_cross_entropy_chunks_and_gradient():
    torch.manual_seed(0)
    hidden = torch.randn(23, 16, requires_grad=True)
    weight = torch.randn(50, 16)
    targets = torch.randint(0, 50, (23,))
    expected = torch.nn.functional.cross_entropy(hidden @ weight.t(), targets, reduction="sum")
    (g_expected,) = torch.autograd.grad(expected * 0.5, hidden)
    for chunk in (1, 5, 23, 100):
        h = hidden.detach().clone().requires_grad_(True)
        loss = linear_cross_entropy(h, weight, targets, chunk=chunk)
        (loss * 0.5).backward()  # the upstream gradient is applied
        torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(h.grad, g_expected, atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # evaluation: no gradient is computed, same loss
        torch.testing.assert_close(linear_cross_entropy(hidden, weight, targets, chunk=7), expected)
    with pytest.raises(ValueError, match="frozen"):
        linear_cross_entropy(hidden, weight.requires_grad_(), targets)


def test_shifted_targets():
    labels = torch.tensor([[-100, 5, 6, -100, 7], [-100, -100, 8, 9, -100]])
    keep, targets = shifted_targets(labels)
    assert keep.tolist() == [[True, True, False, True, False], [False, True, True, False, False]]
    assert targets.tolist() == [5, 6, 7, 8, 9]


def test_fused_lora_dropout_matches_the_formula():
    """With dropout, the fused layer is base + s * B A (x * mask / (1 - p)) for its drawn mask."""
    torch.manual_seed(0)
    x = torch.randn(2, 7, 12, requires_grad=True)
    w = torch.randn(10, 12)
    a, b = torch.randn(4, 12, requires_grad=True), torch.randn(10, 4, requires_grad=True)
    bias, s, p = torch.randn(10), 2.0, 0.3
    torch.manual_seed(5)
    y = LoraLinearFunction.apply(x, w, bias, a, b, s, p)
    torch.manual_seed(5)
    mask = dropout_mask(x.detach().reshape(-1, 12), p).reshape(x.shape)
    assert 0 < mask.float().mean() < 1
    xr = x.detach().clone().requires_grad_(True)
    ar, br = a.detach().clone().requires_grad_(True), b.detach().clone().requires_grad_(True)
    expected = xr @ w.t() + bias + ((xr * mask / keep_probability(p)) @ ar.t() @ br.t()) * s
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(y)
    y.backward(g)
    expected.backward(g)
    for got, want in ((x.grad, xr.grad), (a.grad, ar.grad), (b.grad, br.grad)):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_fused_lora_under_bf16_autocast_follows_autocast(tiny_llama_dir):
    """Under bf16 autocast both run their matmuls in bf16: outputs agree to bf16 precision."""
    batch = _packed_batch(vocab=200)
    outs = []
    for fused in (False, True):
        model = _peft_model(tiny_llama_dir, fused=fused)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outs.append(model(**batch).logits.float())
    with torch.no_grad():
        fp32 = _peft_model(tiny_llama_dir, fused=True)(**batch).logits
    torch.testing.assert_close(outs[1], outs[0], atol=0.05, rtol=0.05)
    assert (outs[1] - fp32).abs().max() > 1e-4  # bf16 really was used


def test_precision_resolution():
    flags = "processor\t: 0\nflags\t\t: fpu sse2 avx512f {}\n"
    assert cpu_supports_bf16(flags.format("avx512_bf16"))
    assert cpu_supports_bf16(flags.format("amx_bf16 amx_tile"))
    assert not cpu_supports_bf16(flags.format("avx2"))
    cpu = torch.device("cpu")
    assert resolve_precision("fp32", cpu) == "fp32" and resolve_precision("bf16", cpu) == "bf16"
    assert resolve_precision("auto", cpu) == ("bf16" if cpu_supports_bf16() else "fp32")
    with pytest.raises(UserError, match="fp16 needs a CUDA GPU"):
        resolve_precision("fp16", cpu)
    with pytest.raises(Exception, match="precision"):
        load_config(None, ["train.precision=int8"])


def test_dropout_mask_keeps_the_right_fraction():
    """Independent draws at the stated rate, for sizes that are not multiples of four."""
    torch.manual_seed(0)
    x = torch.empty(1001, 999)
    for p in (0.05, 0.1, 0.5):
        first, second = dropout_mask(x, p), dropout_mask(x, p)
        assert first.shape == x.shape and first.dtype == torch.bool
        keep = keep_probability(p)
        assert abs(keep - (1 - p)) <= 2**-17
        sd = (keep * (1 - keep) / x.numel()) ** 0.5
        for m in (first, second):
            assert abs(m.float().mean().item() - keep) < 5 * sd
        both = (first & second).float().mean().item()  # independent masks: P(both kept) = keep^2
        assert abs(both - keep**2) < 5 * sd


def test_silu_mul_matches_autograd_and_keeps_two_tensors():
    from zhtune.train.fused_mlp import SiluMul

    torch.manual_seed(0)
    gate, up = torch.randn(7, 12, requires_grad=True), torch.randn(7, 12, requires_grad=True)
    grad = torch.randn(7, 12)
    saved = []

    def count(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(count, lambda t: t):
        want = torch.nn.functional.silu(gate) * up
    n_autograd, saved[:] = len(saved), []
    with torch.autograd.graph.saved_tensors_hooks(count, lambda t: t):
        got = SiluMul.apply(gate, up)
    assert (n_autograd, len(saved)) == (3, 2)  # gate, silu(gate), up -> gate, up
    torch.testing.assert_close(got, want)
    for g, w in zip(torch.autograd.grad(got, (gate, up), grad), torch.autograd.grad(want, (gate, up), grad)):
        torch.testing.assert_close(g, w)


def test_gated_mlps_of_both_families_are_fused(tiny_model_dir):
    """Every decoder MLP goes through SiluMul; same output as the model's own forward."""
    from transformers import AutoModelForCausalLM

    from zhtune.train.fused_mlp import fuse_gated_mlps

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    ids = torch.randint(3, 100, (2, 9))
    with torch.no_grad():
        want = model(input_ids=ids).logits
        assert fuse_gated_mlps(model) == model.config.num_hidden_layers
        torch.testing.assert_close(model(input_ids=ids).logits, want)


def test_the_head_is_not_run_nor_cast_inside_labelled_loss(tiny_llama_dir):
    """Under bf16 autocast no bf16 copy of the head matrix is kept for backward; the head works
    as before afterwards."""
    model = _peft_model(tiny_llama_dir, fused=True)
    head = model.get_output_embeddings()
    inputs = _packed_batch(vocab=200)
    labels = inputs.pop("labels")
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            labelled_loss(model, head, inputs, labels, contextlib.nullcontext())
    assert saved and not [t for t in saved if t.numel() == head.weight.numel()]
    h = torch.randn(3, head.in_features)
    torch.testing.assert_close(head(h), h @ head.weight.t())
    assert "forward" not in head.__dict__


def test_frozen_weights_stored_in_bf16_train_as_under_autocast(tiny_model_dir):
    """Storing the frozen base weights in bf16 changes nothing under bf16 autocast (it casts them
    anyway): same loss, same LoRA gradients; without autocast the model still runs (the probes)."""
    from zhtune.train.fused import store_frozen_weights_in

    results = []
    for store in (False, True):
        model = _peft_model(tiny_model_dir, fused=True, dropout=0.1)
        if store:
            n = store_frozen_weights_in(model, torch.bfloat16)
            assert n == 7 * model.config.num_hidden_layers
            assert {p.dtype for n_, p in model.named_parameters() if "base_layer" in n_} == {torch.bfloat16}
            assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}
        inputs = _packed_batch(vocab=200)
        labels = inputs.pop("labels")
        torch.manual_seed(3)  # the same dropout masks
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss, n_labelled, _ = labelled_loss(model, model.get_output_embeddings(), inputs, labels,
                                                contextlib.nullcontext())
        (loss / n_labelled).backward()
        results.append((loss.detach(), _grads(model)))
        with torch.no_grad():
            assert torch.isfinite(model.eval()(**inputs).logits).all()
    torch.testing.assert_close(results[1][0], results[0][0], atol=0, rtol=0)
    assert results[0][1].keys() == results[1][1].keys()
    for name, g in results[0][1].items():
        torch.testing.assert_close(results[1][1][name], g, atol=0, rtol=0, msg=name)


def test_loss_chunk_rows_follow_the_vocabulary_and_a_byte_budget(monkeypatch):
    """The loss chunk is sized in bytes: rows x vocabulary x bytes per logit stays within the
    device's budget, so a 3x larger vocabulary gets a third of the rows."""
    from zhtune.train import fused
    from zhtune.train.fused import CHUNK_BYTES, chunk_rows

    for device in ("cpu", "cuda"):
        for vocab in (49152, 151936):
            for dtype, per_logit in ((torch.float32, 4), (torch.bfloat16, 8)):
                rows = chunk_rows(vocab, device, dtype)
                assert rows * vocab * per_logit <= CHUNK_BYTES[device] < (rows + 1) * vocab * per_logit
    assert chunk_rows(49152, "cpu", torch.float32) == 170  # SmolLM2, as before: 32 MB
    assert chunk_rows(151936, "cuda", torch.bfloat16) > chunk_rows(151936, "cpu", torch.bfloat16) > 0
    seen = []  # linear_cross_entropy uses it: chunks of chunk_rows rows
    monkeypatch.setattr(fused, "CHUNK_BYTES", {"cpu": 50 * 4 * 3})
    real = torch.Tensor.__matmul__
    monkeypatch.setattr(torch.Tensor, "__matmul__", lambda a, b: seen.append(a.shape[0]) or real(a, b))
    linear_cross_entropy(torch.randn(10, 8), torch.randn(50, 8), torch.randint(0, 50, (10,)))
    assert seen == [3, 3, 3, 1]
