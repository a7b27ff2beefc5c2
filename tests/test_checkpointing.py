"""Gradient checkpointing through zhtune's custom training paths: the fused LoRA linear (with its
dropout masks), the fused gated MLP and the per-sample packed attention. Recomputing a decoder layer
in the backward pass must give the loss and every LoRA gradient of the run without checkpointing.
The memory it saves is measured by benchmarks/checkpointing_memory.py (docs/gpu-memory.md)."""
from __future__ import annotations

import contextlib

import pytest
import torch

from test_fused import _grads, _packed_batch, _peft_model
from zhtune.train.fused import labelled_loss
from zhtune.train.packed_attention import NAME as PACKED

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _step(model_dir, checkpointing: str | None, autocast: bool = False):
    """One forward + backward on packed rows (three samples in the first row), LoRA dropout on.
    ``checkpointing``: None, "non-reentrant" (what zhtune's trainer asks for) or "reentrant"."""
    model = _peft_model(model_dir, fused=True, dropout=0.1)
    assert model.config._attn_implementation == PACKED
    calls = []
    if checkpointing:
        reentrant = checkpointing == "reentrant"
        if reentrant:
            model.enable_input_require_grads()  # what PEFT / HF do for the reentrant variant
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": reentrant})
        for module in model.modules():  # count the layers that really are recomputed
            func = getattr(module, "_gradient_checkpointing_func", None)
            if func is not None and getattr(module, "gradient_checkpointing", False):
                module._gradient_checkpointing_func = (
                    lambda *a, _f=func, **k: calls.append(1) or _f(*a, **k))
    inputs = _packed_batch(vocab=200)
    labels = inputs.pop("labels")
    torch.manual_seed(3)  # the dropout masks of the forward pass
    def ctx():  # a fresh context each time: re-entering one autocast object leaves autocast on after it
        return torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()

    with ctx():
        loss, n, _ = labelled_loss(model, model.get_output_embeddings(), inputs, labels, ctx())
    (loss / n).backward()
    return loss.detach() / n, _grads(model), len(calls), model.config.num_hidden_layers


@pytest.mark.parametrize("checkpointing", ["non-reentrant", "reentrant"])
def test_checkpointing_changes_neither_loss_nor_any_lora_gradient(tiny_model_dir, checkpointing):
    """fp32, both families, packed rows, dropout 0.1: the recomputed forward draws the same dropout
    masks (the RNG state is restored) and finds the same sample boundaries."""
    ref_loss, ref_grads, _, _ = _step(tiny_model_dir, None)
    loss, grads, calls, layers = _step(tiny_model_dir, checkpointing)
    assert calls == layers  # every decoder layer went through the checkpoint
    torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=0)
    assert grads.keys() == ref_grads.keys() and len(grads) == 2 * 7 * layers
    for name, g in grads.items():
        assert g.abs().max() > 0, name
        torch.testing.assert_close(g, ref_grads[name], atol=1e-5, rtol=0, msg=name)


def test_checkpointing_under_bf16_autocast(tiny_llama_dir):
    """The recomputation runs under the autocast of the forward pass (same bf16 products)."""
    ref_loss, ref_grads, _, _ = _step(tiny_llama_dir, None, autocast=True)
    loss, grads, calls, layers = _step(tiny_llama_dir, "non-reentrant", autocast=True)
    assert calls == layers
    torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=0)
    for name, g in grads.items():
        torch.testing.assert_close(g, ref_grads[name], atol=1e-5, rtol=0, msg=name)


def test_a_different_seed_draws_other_masks(tiny_llama_dir):
    """The equality above is not vacuous: dropout is on, and other masks give other gradients."""
    _, ref_grads, _, _ = _step(tiny_llama_dir, None)
    model = _peft_model(tiny_llama_dir, fused=True, dropout=0.1)
    inputs = _packed_batch(vocab=200)
    labels = inputs.pop("labels")
    torch.manual_seed(4)
    loss, n, _ = labelled_loss(model, model.get_output_embeddings(), inputs, labels, contextlib.nullcontext())
    (loss / n).backward()
    other = _grads(model)
    assert max((other[k] - ref_grads[k]).abs().max().item() for k in other) > 1e-4


def test_training_with_checkpointing_logs_the_same_losses(tiny_qwen_dir, shared_data, tmp_path):
    """Through the trainer (train.gradient_checkpointing, as the 7B configs set it): the same
    per-step losses as without it, dropout on."""
    from zhtune.config import load_config
    from zhtune.io import read_jsonl
    from zhtune.train.lora import train_lora

    losses = {}
    for gc in (False, True):
        cfg = load_config(None, [f"model.name_or_path={tiny_qwen_dir}", "data.sample_size=24",
                                 "data.max_length=128", "data.val_size=0", "train.batch_size=4",
                                 "train.max_steps=3", "train.logging_steps=1", "train.save_steps=100",
                                 "train.precision=fp32", "train.report_to=[]", "lora.dropout=0.1",
                                 f"train.gradient_checkpointing={str(gc).lower()}"])
        train_lora(cfg, tmp_path / str(gc), data_dir=shared_data)
        losses[gc] = [e["loss"] for e in read_jsonl(tmp_path / str(gc) / "train_log.jsonl") if "loss" in e]
    assert len(losses[True]) == 3
    assert losses[True] == pytest.approx(losses[False], abs=1e-5)
