"""QLoRA (model.quantization: nf4 | int8) on the CPU, with bitsandbytes' CPU backend: loading,
the fused paths' fallback to PEFT for quantised layers, training (loss falls), evaluating the
adapter on the quantised and the unquantised base, and resuming."""
from __future__ import annotations

import shutil

import pytest
import torch

pytest.importorskip("bitsandbytes")

from test_fused import _packed_batch  # noqa: E402
from zhtune.config import load_config  # noqa: E402
from zhtune.io import read_json, read_jsonl  # noqa: E402
from zhtune.models.loading import load_model  # noqa: E402
from zhtune.models.quantization import is_quantized, is_quantized_linear  # noqa: E402
from zhtune.train.lora import build_peft_model, lora_settings, train_lora  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cfg(model_dir, quantization, *overrides):
    return load_config(None, [f"model.name_or_path={model_dir}", f"model.quantization={quantization}",
                              "model.device=cpu", "data.sample_size=16", "data.max_length=128",
                              "data.val_size=0", "train.batch_size=4", "train.logging_steps=1",
                              "train.save_steps=100", "train.report_to=[]", "train.precision=fp32",
                              "lora.rank=8", "lora.alpha=16", *overrides])


@pytest.mark.parametrize("quantization", ["nf4", "int8"])
def test_quantised_layers_take_peft_path_with_the_same_loss(tiny_model_dir, quantization):
    """Every linear of the decoder is a bitsandbytes layer; zhtune's fused LoRA leaves them to PEFT
    (its fused MLP, packed attention and loss on labelled positions still apply), and the loss
    equals HF's own loss on the same quantised model."""
    from zhtune.models.quantization import prepare_for_training
    from zhtune.train.fused import labelled_loss

    cfg = _cfg(tiny_model_dir, quantization)
    loaded = load_model(cfg.model, for_training=True)
    model = prepare_for_training(loaded.model)
    layer = model.model.layers[0]
    assert is_quantized(model) and is_quantized_linear(layer.self_attn.q_proj)
    assert is_quantized_linear(layer.mlp.down_proj) and not is_quantized_linear(model.lm_head)
    assert {p.dtype for p in model.parameters() if p.dtype.is_floating_point} == {torch.float32}
    peft_model, _ = build_peft_model(model, cfg, lora_settings(cfg, loaded.family), fused=True)
    lora_layers = [m for m in peft_model.modules() if hasattr(m, "lora_A") and hasattr(m, "base_layer")]
    assert len(lora_layers) == 7 * model.config.num_hidden_layers
    assert all(is_quantized_linear(m.base_layer) and "forward" not in m.__dict__ for m in lora_layers)
    g = torch.Generator().manual_seed(1)
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:  # not zero: the adapter must show in the loss
            p.data = torch.randn(p.shape, generator=g) * 0.05
    peft_model.eval()  # no dropout: both passes see the same function
    batch = _packed_batch(vocab=200)
    with torch.no_grad():
        reference = peft_model(**batch).loss
        inputs = dict(batch)
        labels = inputs.pop("labels")
        loss, n, _ = labelled_loss(peft_model, peft_model.get_output_embeddings(), inputs, labels,
                                   torch.autocast("cpu", enabled=False))
    assert torch.isfinite(reference)
    torch.testing.assert_close(loss / n, reference, atol=1e-5, rtol=1e-5)


@pytest.mark.slow  # three short trainings and two evaluations: ~15 s of CPU, more on a busy machine
def test_qlora_nf4_trains_evaluates_on_both_bases_and_resumes(tiny_llama_dir, shared_data, tmp_path):
    """nf4: the loss falls; the adapter evaluates on the quantised base and on the fp32 one (each
    changes the base's predictions' probabilities); a run resumed from its middle checkpoint ends
    with the uninterrupted run's adapter."""
    from safetensors.torch import load_file

    from zhtune.eval.suite import run_eval

    cfg = _cfg(tiny_llama_dir, "nf4", "train.max_steps=24", "train.save_steps=12", "train.learning_rate=0.01",
               "lora.dropout=0.05", "train.warmup_ratio=0")
    ref = tmp_path / "ref"
    metrics = train_lora(cfg, ref, data_dir=shared_data)
    losses = [e["loss"] for e in read_jsonl(ref / "train_log.jsonl") if "loss" in e]
    assert len(losses) == 24 and sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 0.05, losses
    assert read_json(ref / "adapter" / "zhtune_adapter.json")["config"]["model"]["quantization"] == "nf4"

    # Resume: a run whose only checkpoint is the reference's step 12.
    resumed = tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(ref / "checkpoints" / "checkpoint-12", resumed / "checkpoints" / "checkpoint-12")
    shutil.copy(ref / "checkpoints" / "zhtune_run.json", resumed / "checkpoints" / "zhtune_run.json")
    again = train_lora(cfg, resumed, dataset_dir=ref / "data", data_dir=shared_data)
    assert again["resumed_from"] == 12 and again["steps"] == metrics["steps"] == 24
    want, got = (load_file(str(d / "adapter" / "adapter_model.safetensors")) for d in (ref, resumed))
    assert want.keys() == got.keys() and want
    for k in want:
        torch.testing.assert_close(got[k], want[k], atol=1e-5, rtol=1e-4, msg=k)

    # Evaluate the adapter on the nf4 base and on the unquantised base.
    ev = load_config(None, ["eval.benchmarks=[ceval]", "eval.limit=1", "eval.shots=0",
                            "eval.max_per_benchmark=4", "eval.perplexity_chars=200"]).eval
    for quantization in ("nf4", "none"):
        model_cfg = cfg.model.model_copy(update={"quantization": quantization})
        out = tmp_path / f"eval-{quantization}"
        run_eval(model_cfg, ev, out, data_dir=shared_data, adapters=[ref / "adapter"], progress=False)
        base = list(read_jsonl(out / "base" / "predictions.jsonl"))
        tuned = list(read_jsonl(out / "ref" / "predictions.jsonl"))
        assert len(base) == len(tuned) == 4
        assert any(b["probs"] != t["probs"] for b, t in zip(base, tuned))  # the adapter is applied


def test_quantization_is_validated_and_changes_the_run_fingerprint(tiny_llama_dir):
    from zhtune.train.checkpoints import run_fingerprint

    with pytest.raises(Exception, match="quantization"):
        load_config(None, ["model.quantization=fp4"])
    fps = {q: run_fingerprint(_cfg(tiny_llama_dir, q), "data") for q in ("none", "nf4", "int8")}
    assert len(set(fps.values())) == 3  # resuming a run with another base precision is refused


@pytest.mark.slow  # a real 135M model: ~1 minute on two cores
def test_qlora_nf4_on_smollm2(shared_data, tmp_path):
    """The built-in SmolLM2-135M in nf4: the training loss falls, and the adapter evaluates on the
    quantised and on the unquantised base."""
    from zhtune.eval.suite import run_eval

    cfg = _cfg("builtin:smollm2-135m-instruct", "nf4", "train.max_steps=12", "train.learning_rate=2e-3",
               "train.warmup_ratio=0", "data.sample_size=24", "lora.dropout=0.0")
    metrics = train_lora(cfg, tmp_path / "run", data_dir=shared_data)
    losses = [e["loss"] for e in read_jsonl(tmp_path / "run" / "train_log.jsonl") if "loss" in e]
    assert metrics["steps"] == 12 and sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses
    ev = load_config(None, ["eval.benchmarks=[ceval]", "eval.limit=1", "eval.shots=0",
                            "eval.max_per_benchmark=3", "eval.perplexity_chars=200"]).eval
    for quantization in ("nf4", "none"):
        out = tmp_path / f"eval-{quantization}"
        run_eval(cfg.model.model_copy(update={"quantization": quantization}), ev, out, data_dir=shared_data,
                 adapters=[tmp_path / "run" / "adapter"], progress=False)
        assert len(list(read_jsonl(out / "run" / "predictions.jsonl"))) == 3
