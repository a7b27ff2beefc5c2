"""GPU memory a LoRA training step needs, computed from parameter counts (docs/gpu-memory.md).

    memory = weights + 16 B x LoRA parameters + activations + 1.5 GB (CUDA context, allocator slack)

* weights: bf16 2 B x N; nf4 4.127 bits x N_linear (4-bit NormalFloat with double-quantised block
  constants) + 4 B x N_other; int8 1 B x N_linear + 4 B x N_other. N_other (embeddings, head,
  norms) is upcast to fp32 by PEFT's prepare_model_for_kbit_training.
* LoRA: fp32 weights, gradients and two AdamW moments: 16 B per parameter.
* activations, T tokens per micro-batch, L layers, hidden h, intermediate i, key-value width h_kv:
  per layer and token zhtune's training path keeps a = 2 B x (4h + 2h_kv + 3i) (bf16 attention and
  MLP inputs, q/k/v, attention output, gate/up and their product) + 8h (fp32 norm inputs) + 6h + i
  (1-byte dropout masks). Without checkpointing L x T x a; with it, the layer inputs L x T x h x s
  (s = 2 B for a bf16 base, 4 B for a quantised one, whose embeddings are fp32) plus one layer's
  T x a during its recomputation. Plus one loss chunk (512 MiB on CUDA, zhtune.train.fused).

    python benchmarks/memory_estimate.py      # the shipped 7B configs, T = batch_size x max_length
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

GB = 1e9
OVERHEAD = 1.5 * GB
LOSS_CHUNK = 2**29
NF4_BITS = 4.127


def counts(shape: dict, rank: int) -> dict:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(**shape)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    linears = [m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and "lm_head" not in n]
    total = sum(p.numel() for p in model.parameters())
    n_linear = sum(m.weight.numel() for m in linears)
    return {"total": total, "linear": n_linear, "other": total - n_linear,
            "lora": sum(rank * (m.in_features + m.out_features) for m in linears), "cfg": cfg}


def estimate(c: dict, precision: str, tokens: int, checkpointing: bool) -> dict:
    cfg = c["cfg"]
    h, i, layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    h_kv = cfg.num_key_value_heads * (h // cfg.num_attention_heads)
    weights = {"bf16": 2 * c["total"], "nf4": NF4_BITS / 8 * c["linear"] + 4 * c["other"],
               "int8": c["linear"] + 4 * c["other"]}[precision]
    per_token_layer = 2 * (4 * h + 2 * h_kv + 3 * i) + 8 * h + 6 * h + i
    if checkpointing:
        s = 2 if precision == "bf16" else 4
        activations = layers * tokens * h * s + tokens * per_token_layer
    else:
        activations = layers * tokens * per_token_layer
    parts = {"weights": weights, "lora": 16 * c["lora"], "activations": activations + LOSS_CHUNK,
             "overhead": OVERHEAD}
    return {**parts, "total": sum(parts.values())}


def main() -> None:
    from gpu_acceptance import SHAPES

    from zhtune.config import load_config

    configs = Path(__file__).resolve().parents[1] / "src" / "zhtune" / "configs"
    for name, shape_name in (("llama2-7b-belle", "llama2-7b"), ("qwen2.5-7b-instruct-belle", "qwen2.5-7b")):
        cfg = load_config(str(configs / f"{name}.yaml"), [])
        tokens = cfg.train.batch_size * cfg.data.max_length
        c = counts(SHAPES["7b"][shape_name], cfg.lora.rank)
        print(f"{name}: {c['total'] / 1e9:.2f}B parameters ({c['linear'] / 1e9:.2f}B in linears), "
              f"LoRA r{cfg.lora.rank}: {c['lora'] / 1e6:.1f}M, {tokens} tokens per micro-batch")
        for precision in ("bf16", "nf4", "int8"):
            for gc in (True, False):
                e = estimate(c, precision, tokens, gc)
                print(f"  {precision:4s} checkpointing {'on ' if gc else 'off'}: {e['total'] / GB:5.1f} GB  "
                      f"(weights {e['weights'] / GB:.1f}, LoRA+Adam {e['lora'] / GB:.2f}, "
                      f"activations {e['activations'] / GB:.1f}, overhead {e['overhead'] / GB:.1f})")


if __name__ == "__main__":
    main()
