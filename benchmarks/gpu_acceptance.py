"""The GPU acceptance cases of scripts/gpu_check.sh: LoRA training at real 7B shapes, no download.

Models are random-initialised at the shapes of Llama-2-7B and Qwen2.5-7B (``--shapes 7b``; the
CPU mode uses two tiny models of the same families, ``--shapes tiny``), saved as safetensors with a
tokenizer borrowed from a tiny zhtune model, and loaded back through ``zhtune.models.loading``
(so that nf4 goes through the real QLoRA loading). Per model, three cases, LoRA r16 on all seven
linears, zhtune's training path (fused LoRA, fused MLP, packed attention, loss on labelled
positions), AdamW on the adapter, bf16 autocast:

    bf16       gradient checkpointing off
    bf16-gc    gradient checkpointing on (its peak memory must be lower than bf16's on a GPU)
    nf4-gc     QLoRA: the base in NF4 (bitsandbytes), checkpointing on

One line per case: PASS/FAIL, trained tokens/s, peak GPU memory (torch.cuda.max_memory_allocated),
and MFU = tokens/s x 4 x parameters / peak bf16 FLOP/s of the GPU. 4N per token: a forward pass
(2N) and the backward pass to the activations (2N); the frozen base has no weight gradients, and
recomputation under checkpointing is not counted as useful work; attention's own FLOPs are left out
(they add ~5% at 1,024 tokens). The peak is looked up by GPU name (``PEAK_BF16_TFLOPS``) or given
with ``GPU_PEAK_TFLOPS``.

    python benchmarks/gpu_acceptance.py --tokenizer-from /tmp/tiny-qwen2 --work /tmp/acc --device cuda
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import shutil
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from checkpointing_memory import _batch  # noqa: E402

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity), by a substring of torch.cuda.get_device_name.
PEAK_BF16_TFLOPS = {"H200": 989, "H100": 989, "H800": 989, "GH200": 989, "B200": 2250, "A100": 312,
                    "A800": 312, "L40S": 362, "L40": 181, "A10G": 70, "A6000": 155, "4090": 165,
                    "3090": 71}

SHAPES = {
    "7b": {
        "llama2-7b": dict(model_type="llama", hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                          num_attention_heads=32, num_key_value_heads=32, vocab_size=32000,
                          max_position_embeddings=4096, rms_norm_eps=1e-5, tie_word_embeddings=False),
        "qwen2.5-7b": dict(model_type="qwen2", hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                           num_attention_heads=28, num_key_value_heads=4, vocab_size=152064,
                           max_position_embeddings=32768, rms_norm_eps=1e-6, rope_theta=1e6,
                           tie_word_embeddings=False),
    },
    "tiny": {
        "llama-tiny": dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024,
                           tie_word_embeddings=False),
        "qwen2-tiny": dict(model_type="qwen2", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                           tie_word_embeddings=False),
    },
}
CASES = (("bf16", "none", False), ("bf16-gc", "none", True), ("nf4-gc", "nf4", True))


def peak_tflops(device) -> float | None:
    import torch

    if os.environ.get("GPU_PEAK_TFLOPS"):
        return float(os.environ["GPU_PEAK_TFLOPS"])
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def build_random_model(shape: dict, folder: Path, tokenizer_from: Path, device) -> int:
    """A random model of ``shape`` saved to ``folder`` (bf16 safetensors + the borrowed tokenizer);
    returns its parameter count."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    shape = dict(shape)
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_from))
    shape.setdefault("vocab_size", len(tokenizer))
    config = AutoConfig.for_model(**shape)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    n = sum(p.numel() for p in model.parameters())
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    del model
    return n


def run_case(folder: Path, quantization: str, checkpointing: bool, args) -> dict:
    """Load through zhtune, wrap with LoRA, train ``args.steps`` measured steps after a warm-up."""
    import torch

    from zhtune.config import load_config
    from zhtune.models.loading import load_model
    from zhtune.train.fused import labelled_loss
    from zhtune.train.lora import build_peft_model, lora_settings

    device = torch.device(args.device)
    cfg = load_config(None, [f"model.name_or_path={folder}", f"model.device={args.device}",
                             "model.dtype=bfloat16", f"model.quantization={quantization}", "lora.rank=16",
                             "lora.alpha=32", "lora.dropout=0.05", "lora.targets=all"])
    loaded = load_model(cfg.model, for_training=True)
    model = loaded.model
    if quantization != "none":
        from zhtune.models.quantization import prepare_for_training

        model = prepare_for_training(model)
    model, _ = build_peft_model(model, cfg, lora_settings(cfg, loaded.family))
    model.train()
    if checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    params = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    head = model.get_output_embeddings()
    inputs, labels = _batch(args.rows, args.length, model.config.vocab_size, device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16)
    losses = []

    def step():
        with autocast:
            loss, n, _ = labelled_loss(model, head, inputs, labels, autocast)
        (loss / n).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()) / n)

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    moved = any(not torch.equal(p.detach(), b) for p, b in zip(params, before))
    result = {"tokens_per_s": args.rows * args.length * args.steps / seconds, "peak_gib": peak,
              "ok": all(math.isfinite(x) for x in losses) and moved, "loss": losses[-1]}
    del model, loaded, optimizer, params, before
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokenizer-from", type=Path, required=True)
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--device", default="cuda")
    p.add_argument("--shapes", choices=sorted(SHAPES), default="7b")
    p.add_argument("--rows", type=int, default=4)
    p.add_argument("--length", type=int, default=1024)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=4)
    args = p.parse_args()
    import torch

    device = torch.device(args.device)
    peak = peak_tflops(device)
    failed = False
    for name, shape in SHAPES[args.shapes].items():
        folder = args.work / name
        try:
            n_params = build_random_model(shape, folder, args.tokenizer_from, device)
        except Exception as err:  # noqa: BLE001 - reported as one line, the other model still runs
            print(f"FAIL {name}: could not build the random model: {err!r}", flush=True)
            failed = True
            continue
        peaks = {}
        for case, quantization, checkpointing in CASES:
            label = f"{name}/{case}"
            try:
                r = run_case(folder, quantization, checkpointing, args)
            except Exception as err:  # noqa: BLE001
                traceback.print_exc(file=sys.stderr)
                print(f"FAIL {label}: {type(err).__name__}: {str(err)[:200]}", flush=True)
                failed = True
                continue
            peaks[case] = r["peak_gib"]
            note = ""
            if case == "bf16-gc" and r["peak_gib"] is not None and peaks.get("bf16") is not None \
                    and not r["peak_gib"] < peaks["bf16"]:
                r["ok"], note = False, " (checkpointing did not lower the peak)"
            mfu = r["tokens_per_s"] * 4 * n_params / (peak * 1e12) if peak else None
            memory = "n/a" if r["peak_gib"] is None else f"{r['peak_gib']:.1f} GiB"
            util = "n/a" if mfu is None else f"{100 * mfu:.1f}%"
            print(f"{'PASS' if r['ok'] else 'FAIL'} {label}: {r['tokens_per_s']:,.0f} tokens/s, "
                  f"peak {memory}, MFU {util}, loss {r['loss']:.3f}{note}", flush=True)
            failed |= not r["ok"]
        shutil.rmtree(folder, ignore_errors=True)
    print(json.dumps({"peak_bf16_tflops": peak, "device": str(device)}), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
