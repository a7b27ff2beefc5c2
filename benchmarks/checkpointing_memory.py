"""Peak memory of one LoRA training step with and without gradient checkpointing.

zhtune's training path (fused LoRA linear, fused gated MLP, per-sample packed attention, loss on
labelled positions) on packed rows of several samples, LoRA r=16 on all seven linears, dropout
0.05. Each case runs in its own process: load, one warm-up step, then the measured step.
Reported: the memory the step adds on top of what was resident before it (CPU: peak RSS via
/proc/self/clear_refs, GPU: torch.cuda.max_memory_allocated) and the step's seconds.

    python benchmarks/checkpointing_memory.py                      # SmolLM2-135M, CPU, fp32 + bf16
    python benchmarks/checkpointing_memory.py --model /path/to/tiny --rows 2 --length 256
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def _rss_reset() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (peak RSS) on Linux


def _status_mb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) / 1024
    raise RuntimeError(key)


def _batch(rows: int, length: int, vocab: int, device):
    """Packed rows of samples of 64..320 tokens, positions restarting, the first fifth of each
    sample a prompt without labels."""
    import torch

    g = torch.Generator().manual_seed(0)
    ids, labels, pos = [], [], []
    for _ in range(rows):
        r_ids, r_lab, r_pos = [], [], []
        while len(r_ids) < length:
            n = min(int(torch.randint(64, 320, (1,), generator=g)), length - len(r_ids))
            s = torch.randint(3, vocab, (n,), generator=g).tolist()
            r_ids += s
            r_lab += [-100] * max(1, n // 5) + s[max(1, n // 5):]
            r_pos += list(range(n))
        ids.append(r_ids), labels.append(r_lab), pos.append(r_pos)
    t = lambda x: torch.tensor(x, device=device)  # noqa: E731
    return {"input_ids": t(ids), "position_ids": t(pos)}, t(labels)


def run_case(args) -> dict:
    import contextlib

    import torch
    from transformers import AutoModelForCausalLM

    from zhtune.config import load_config
    from zhtune.models.families import detect_family
    from zhtune.models.sources import resolve_model
    from zhtune.train.fused import labelled_loss
    from zhtune.train.lora import build_peft_model, lora_settings

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    path = resolve_model(args.model)
    base = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).to(device)
    cfg = load_config(None, [f"model.name_or_path={path}", "lora.rank=16", "lora.alpha=32", "lora.dropout=0.05"])
    model, _ = build_peft_model(base, cfg, lora_settings(cfg, detect_family(base.config, None, str(path), None)))
    model.train()
    if args.checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    inputs, labels = _batch(args.rows, args.length, base.config.vocab_size, device)
    head = model.get_output_embeddings()
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if args.precision == "bf16"
                else contextlib.nullcontext())

    def step():
        with autocast:
            loss, n, _ = labelled_loss(model, head, inputs, labels, autocast)
        (loss / n).backward()
        model.zero_grad(set_to_none=True)

    step()  # warm-up: allocator caches, the gradients' first allocation
    if device.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated() / 2**20
        torch.cuda.reset_peak_memory_stats()
    else:
        before = _status_mb("VmRSS:")
        _rss_reset()
    t0 = time.perf_counter()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = _status_mb("VmHWM:")
    return {"checkpointing": args.checkpointing, "precision": args.precision, "step_mb": round(peak - before, 1),
            "seconds": round(time.perf_counter() - t0, 2), "device": args.device}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="builtin:smollm2-135m-instruct")
    p.add_argument("--device", default="cpu")
    p.add_argument("--rows", type=int, default=2)
    p.add_argument("--length", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--case", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--checkpointing", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.case:
        print(json.dumps(run_case(args)))
        return
    print(f"{args.model}: {args.rows} packed rows x {args.length} tokens, LoRA r16 all linears, {args.device}")
    for precision in args.precisions.split(","):
        for gc in (False, True):
            cmd = [sys.executable, __file__, "--case", "--precision", precision, "--model", args.model,
                   "--device", args.device, "--rows", str(args.rows), "--length", str(args.length),
                   "--threads", str(args.threads)] + (["--checkpointing"] if gc else [])
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.splitlines()[-1]
            r = json.loads(out)
            print(f"  {precision:5s} checkpointing {'on ' if gc else 'off'}: step adds {r['step_mb']:8.1f} MB, "
                  f"{r['seconds']:.2f} s")


if __name__ == "__main__":
    main()
