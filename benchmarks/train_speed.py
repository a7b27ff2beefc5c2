"""Training speed: zhtune (packed rows, block-diagonal attention) vs a plain HF Trainer + PEFT recipe
that pads every sample to max_length.

Both train the same model with the same LoRA settings, batch size, number of optimizer steps and
the same tokenised samples (same chat format and prompt masking, same truncation), each in a fresh
process. Reported per recipe: trained (non-padding) tokens per second of ``trainer.train`` and the
peak memory while training (CPU: peak RSS during training, reset before it starts via
/proc/self/clear_refs; GPU: torch.cuda.max_memory_allocated).

    python benchmarks/train_speed.py --data-dir /work/shared/data            # tiny Llama, ~1-2 min
    python benchmarks/train_speed.py --model builtin:smollm2-135m-instruct --steps 4

The default model is a random Llama built on the spot (hidden 256, 4 layers, 4k vocab): small
enough for a 2-core CPU, large enough that compute, not Python overhead, dominates a step.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def _rss_reset() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (peak RSS) on Linux
        return True
    except OSError:
        return False


def _rss_peak_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _config(args):
    from zhtune.config import load_config

    return load_config(None, [
        f"model.name_or_path={args.model_path}", "data.train=[belle/dev1K.json]",
        f"data.sample_size={args.sample_size}", f"data.max_length={args.max_length}", "data.val_size=0",
        f"train.max_steps={args.steps}", f"train.batch_size={args.batch_size}",
        "train.learning_rate=2e-4", "train.save_steps=1000000", "train.logging_steps=1000000",
        "train.report_to=[]", "lora.rank=16", "lora.alpha=32", "lora.dropout=0.05"])


def _measure(train_fn, device) -> dict:
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    reset = _rss_reset()
    t0 = time.perf_counter()
    tokens, runtime = train_fn()
    wall = time.perf_counter() - t0
    out = {"tokens": tokens, "train_runtime_s": runtime, "wall_s": round(wall, 2),
           "tokens_per_second": tokens / runtime,
           "peak_rss_mb": round(_rss_peak_mb(), 1), "rss_peak_reset": reset}
    if device.type == "cuda":
        out["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def run_zhtune(args) -> dict:
    from zhtune.data.sft import prepare_dataset
    from zhtune.train.lora import _device_and_dtype, train_lora

    cfg = _config(args)
    work = Path(args.workdir) / "zhtune"
    if args.mode == "prepare":  # its own process, so that the measured one starts as clean as the other
        prepare_dataset(cfg, work / "data", data_dir=args.data_dir, show_progress=False)
        return {}
    device, _ = _device_and_dtype(cfg.model)

    def train():
        m = train_lora(cfg, work / "out", dataset_dir=work / "data", resume=False)
        return m["train_tokens"], m["train_runtime"]

    return _measure(train, device)


def run_padded(args) -> dict:
    """The plain recipe: every sample padded to max_length with an attention mask, HF defaults."""
    import datasets
    import torch
    from transformers import Trainer, TrainingArguments, default_data_collator, set_seed

    from zhtune.data.instructions import build_instruction_set
    from zhtune.data.sft import ChatFormatter, encode_records
    from zhtune.models.loading import load_model
    from zhtune.train.lora import _device_and_dtype, build_peft_model, lora_settings

    cfg = _config(args)
    device, dtype = _device_and_dtype(cfg.model)

    def train():  # model loading included, as in train_lora, so that peak memory compares fairly
        loaded = load_model(cfg.model, for_training=True)
        tok = loaded.tokenizer
        iset = build_instruction_set(cfg.data, args.data_dir)
        samples, _ = encode_records(iset.train, ChatFormatter(tok, loaded.family, True), args.max_length)
        L, pad = args.max_length, tok.pad_token_id
        rows = {"input_ids": [], "attention_mask": [], "labels": []}
        for ids, labels in samples:
            n = len(ids)
            rows["input_ids"].append(ids + [pad] * (L - n))
            rows["attention_mask"].append([1] * n + [0] * (L - n))
            rows["labels"].append(labels + [-100] * (L - n))
        dataset = datasets.Dataset.from_dict(rows)
        set_seed(cfg.train.seed)
        model, _ = build_peft_model(loaded.model, cfg, lora_settings(cfg, loaded.family))
        targs = TrainingArguments(
            output_dir=str(Path(args.workdir) / "padded"), max_steps=args.steps,
            per_device_train_batch_size=args.batch_size, learning_rate=2e-4,
            lr_scheduler_type="cosine", warmup_steps=0.03, logging_steps=1000000, save_strategy="no",
            report_to="none", seed=cfg.train.seed, include_num_input_tokens_seen="non_padding",
            disable_tqdm=True, use_cpu=device.type == "cpu",
            bf16=device.type == "cuda" and dtype == torch.bfloat16,
            fp16=device.type == "cuda" and dtype == torch.float16)
        trainer = Trainer(model=model, args=targs, train_dataset=dataset,
                          data_collator=default_data_collator)
        result = trainer.train()
        return trainer.state.num_input_tokens_seen, result.metrics["train_runtime"]

    return _measure(train, device)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="tiny", help="'tiny' (built here) or any model spec zhtune loads")
    p.add_argument("--data-dir", default=os.environ.get("ZHTUNE_DATA_DIR", "../shared/data"))
    p.add_argument("--steps", type=int, default=12, help="optimizer steps per recipe")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--sample-size", type=int, default=400)
    p.add_argument("--workdir", default="/tmp/zhtune-train-speed")
    p.add_argument("--output", help="also write the results as JSON here")
    p.add_argument("--mode", choices=["prepare", "zhtune", "padded"], help=argparse.SUPPRESS)
    p.add_argument("--model-path", help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.mode:  # a child process: one recipe, one JSON line
        result = run_padded(args) if args.mode == "padded" else run_zhtune(args)
        print("RESULT " + json.dumps(result))
        return

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    model_path = args.model
    if args.model == "tiny":
        from zhtune.testing import build_tiny_model

        model_path = str(work / "tiny-llama-256x4")
        if not (Path(model_path) / "config.json").exists():
            build_tiny_model("llama", model_path, Path(args.data_dir), hidden=256, layers=4)
    results = {}
    for mode in ("prepare", "padded", "zhtune"):
        cmd = [sys.executable, __file__, "--mode", mode, "--model-path", model_path,
               "--data-dir", args.data_dir, "--steps", str(args.steps), "--batch-size", str(args.batch_size),
               "--max-length", str(args.max_length), "--sample-size", str(args.sample_size),
               "--workdir", str(work)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        line = next((l for l in done.stdout.splitlines() if l.startswith("RESULT ")), None)
        if done.returncode != 0 or line is None:
            sys.exit(f"{mode} run failed:\n{done.stderr[-3000:]}")
        results[mode] = json.loads(line[len("RESULT "):])
    results.pop("prepare")

    z, b = results["zhtune"], results["padded"]
    ratio = z["tokens_per_second"] / b["tokens_per_second"]
    mem_key = "peak_gpu_mb" if "peak_gpu_mb" in z else "peak_rss_mb"
    print(f"model {args.model}, {args.steps} steps x batch {args.batch_size}, max_length {args.max_length}, "
          f"BELLE sample {args.sample_size}, threads {os.environ.get('OMP_NUM_THREADS', 'default')}")
    print(f"{'recipe':<28}{'trained tokens':>15}{'seconds':>10}{'tokens/s':>11}{'peak MB':>10}")
    for name, r in (("HF Trainer, pad to max", b), ("zhtune (packed)", z)):
        print(f"{name:<28}{r['tokens']:>15}{r['train_runtime_s']:>10.2f}{r['tokens_per_second']:>11.1f}"
              f"{r[mem_key]:>10.1f}")
    print(f"tokens/s ratio zhtune / padded: {ratio:.2f}x; peak memory ratio: "
          f"{z[mem_key] / b[mem_key]:.2f}x ({mem_key})")
    if args.output:
        Path(args.output).write_text(json.dumps({"args": vars(args), "results": results,
                                                 "tokens_per_second_ratio": ratio}, indent=2))


if __name__ == "__main__":
    main()
