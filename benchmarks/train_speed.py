"""Training speed and memory: zhtune against TRL's SFTTrainer, fp32 and bf16 autocast, one run.

The anchor is the recipe of issue 14: SmolLM2-135M (``builtin:smollm2-135m-instruct``), LoRA r=16 /
alpha=32 / dropout 0.05 on all seven linear layers, the same 300 BELLE samples (``belle/dev1K.json``,
seeded sample), max length 512, 2 rows per step, 8 optimizer steps, 2 threads.

* ``zhtune``: ``train_lora`` (packed rows, loss on labelled positions, fused LoRA), with
  ``train.precision`` fp32 or bf16.
* ``trl``: TRL's ``SFTTrainer`` with ``packing=True`` (BFD, which turns padding-free on),
  ``completion_only_loss=True`` on prompt-completion conversations, the same PEFT LoRA, TRL's
  own defaults otherwise (among them ``gradient_checkpointing=True``), ``bf16`` False or True.
* ``padded`` (``--recipes``): a plain HF ``Trainer`` + PEFT padding every sample to max length.

Every recipe runs in its own process, so that its peak RSS is its own; the order is interleaved
(zhtune fp32, TRL fp32, zhtune bf16, TRL bf16) so that a change of load hits both sides.
Reported per recipe: trained (non-padding) tokens per second of ``trainer.train`` and the peak
memory from model loading to the end of training (CPU: peak RSS, reset via /proc/self/clear_refs
when the recipe starts; GPU: torch.cuda.max_memory_allocated).

    python benchmarks/train_speed.py --data-dir /work/shared/data          # the anchor, ~5 min on 2 cores
    python benchmarks/train_speed.py --model tiny --recipes zhtune-fp32,padded-fp32
TRL is a benchmark-only dependency: ``pip install 'zhtune[bench]'``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_RECIPES = "zhtune-fp32,trl-fp32,zhtune-bf16,trl-bf16"


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


def _config(args, precision: str = "fp32"):
    from zhtune.config import load_config

    return load_config(None, [
        f"model.name_or_path={args.model_path}", "data.train=[belle/dev1K.json]",
        f"data.sample_size={args.sample_size}", f"data.max_length={args.max_length}", "data.val_size=0",
        f"train.max_steps={args.steps}", f"train.batch_size={args.batch_size}",
        "train.learning_rate=2e-4", "train.save_steps=1000000",
        "train.report_to=[]", "train.logging_steps=1", "lora.rank=16", "lora.alpha=32",
        "lora.dropout=0.05",
        f"train.precision={precision}"])


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


def _device(args):
    from zhtune.train.lora import _device_and_dtype

    return _device_and_dtype(_config(args).model)


def run_prepare(args) -> dict:
    """zhtune's prepared data, in its own process so that the measured ones start equally clean."""
    from zhtune.data.sft import prepare_dataset

    prepare_dataset(_config(args), Path(args.workdir) / "zhtune" / "data", data_dir=args.data_dir,
                    show_progress=False)
    return {}


def run_zhtune(args, precision: str) -> dict:
    from zhtune.train.lora import train_lora

    cfg = _config(args, precision)
    work = Path(args.workdir) / "zhtune"

    def train():
        m = train_lora(cfg, work / f"out-{precision}", dataset_dir=work / "data", resume=False)
        return m["train_tokens"], m["train_runtime"]

    result = _measure(train, _device(args)[0])
    log = (work / f"out-{precision}" / "train_log.jsonl").read_text(encoding="utf-8").splitlines()
    result["losses"] = [e["loss"] for e in map(json.loads, log) if "loss" in e]  # the curve, per step
    return result


def _lora_config(model):
    from peft import LoraConfig

    from zhtune.models.targets import resolve_lora_targets

    return LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, bias="none", task_type="CAUSAL_LM",
                      target_modules=resolve_lora_targets(model, "all"))


def run_trl(args, precision: str) -> dict:
    """TRL's SFTTrainer: BFD packing (padding-free), completion-only loss, same data and LoRA."""
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
    from trl import SFTConfig, SFTTrainer

    from zhtune.data.instructions import build_instruction_set
    from zhtune.data.sft import ChatFormatter
    from zhtune.models.families import detect_family

    cfg = _config(args)
    device = _device(args)[0]

    class CountingSFTTrainer(SFTTrainer):
        """Counts the tokens of the training batches (padding-free: every token is real)."""

        tokens = 0

        def compute_loss(self, model, inputs, *a, **kw):
            if model.training:
                mask = inputs.get("attention_mask")
                self.tokens += int(mask.sum() if mask is not None else inputs["input_ids"].numel())
            return super().compute_loss(model, inputs, *a, **kw)

    def train():  # model loading and TRL's tokenising / packing included, as in train_lora
        tok = AutoTokenizer.from_pretrained(args.model_path)
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        model = AutoModelForCausalLM.from_pretrained(args.model_path, dtype=torch.float32)
        # The same samples in the same text as zhtune's: its formatter's prompt and answer segments
        # (chat template or plain template, answer closed by the turn end).
        fmt = ChatFormatter(tok, detect_family(model.config, tok, args.model_path), True)
        rows = []
        for r in build_instruction_set(cfg.data, args.data_dir).train:
            segments = fmt.segments(r.messages)
            rows.append({"prompt": "".join(text for text, _ in segments[:-1]),
                         "completion": segments[-1][0]})
        dataset = datasets.Dataset.from_list(rows)
        set_seed(cfg.train.seed)
        sft = SFTConfig(
            output_dir=str(Path(args.workdir) / f"trl-{precision}"), max_steps=args.steps,
            per_device_train_batch_size=args.batch_size, learning_rate=2e-4,
            lr_scheduler_type="cosine", warmup_steps=0.03, logging_steps=1000000,
            save_strategy="no", report_to="none", seed=cfg.train.seed, disable_tqdm=True,
            max_length=args.max_length, packing=True, packing_strategy="bfd",
            completion_only_loss=True, use_cpu=device.type == "cpu",
            bf16=precision == "bf16", fp16=False)
        trainer = CountingSFTTrainer(model=model, args=sft, train_dataset=dataset,
                                     processing_class=tok, peft_config=_lora_config(model))
        result = trainer.train()
        return trainer.tokens, result.metrics["train_runtime"]

    return _measure(train, device)


def run_padded(args, precision: str) -> dict:
    """The plain recipe: every sample padded to max_length with an attention mask, HF defaults."""
    import datasets
    from transformers import Trainer, TrainingArguments, default_data_collator, set_seed

    from zhtune.data.instructions import build_instruction_set
    from zhtune.data.sft import ChatFormatter, encode_records
    from zhtune.models.loading import load_model
    from zhtune.train.lora import build_peft_model, lora_settings

    cfg = _config(args)
    device = _device(args)[0]

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
        model, _ = build_peft_model(loaded.model, cfg, lora_settings(cfg, loaded.family), fused=False)
        targs = TrainingArguments(
            output_dir=str(Path(args.workdir) / "padded"), max_steps=args.steps,
            per_device_train_batch_size=args.batch_size, learning_rate=2e-4,
            lr_scheduler_type="cosine", warmup_steps=0.03, logging_steps=1000000, save_strategy="no",
            report_to="none", seed=cfg.train.seed, include_num_input_tokens_seen="non_padding",
            disable_tqdm=True, use_cpu=device.type == "cpu", bf16=precision == "bf16")
        trainer = Trainer(model=model, args=targs, train_dataset=dataset,
                          data_collator=default_data_collator)
        result = trainer.train()
        return trainer.state.num_input_tokens_seen, result.metrics["train_runtime"]

    return _measure(train, device)


RUNNERS = {"zhtune": run_zhtune, "trl": run_trl, "padded": run_padded}


def _load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="builtin:smollm2-135m-instruct",
                   help="'tiny' (a random Llama built here) or any model spec zhtune loads")
    p.add_argument("--data-dir", default=os.environ.get("ZHTUNE_DATA_DIR", "../shared/data"))
    p.add_argument("--recipes", default=DEFAULT_RECIPES,
                   help="comma-separated NAME-PRECISION, NAME in zhtune, trl, padded; PRECISION fp32 or bf16")
    p.add_argument("--steps", type=int, default=8, help="optimizer steps per recipe")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--sample-size", type=int, default=300)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workdir", default="/tmp/zhtune-train-speed")
    p.add_argument("--output", help="also write the results as JSON here")
    p.add_argument("--mode", help=argparse.SUPPRESS)
    p.add_argument("--model-path", help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.mode:  # a child process: one recipe, one JSON line
        import torch

        torch.set_num_threads(args.threads)
        if args.mode == "prepare":
            result = run_prepare(args)
        else:
            name, precision = args.mode.split("-")
            result = RUNNERS[name](args, precision)
        print("RESULT " + json.dumps(result))
        return

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    if args.model == "tiny":
        from zhtune.testing import build_tiny_model

        model_path = str(work / "tiny-llama-256x4")
        if not (Path(model_path) / "config.json").exists():
            build_tiny_model("llama", model_path, Path(args.data_dir), hidden=256, layers=4)
    else:
        from zhtune.models.sources import resolve_model

        model_path = str(resolve_model(args.model))
    recipes = args.recipes.split(",")
    results, load = {}, [_load()]
    for mode in ["prepare", *recipes]:
        cmd = [sys.executable, __file__, "--mode", mode, "--model-path", model_path,
               "--data-dir", args.data_dir, "--steps", str(args.steps), "--batch-size", str(args.batch_size),
               "--max-length", str(args.max_length), "--sample-size", str(args.sample_size),
               "--threads", str(args.threads), "--workdir", str(work)]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        done = subprocess.run(cmd, capture_output=True, text=True, env=env)
        line = next((l for l in done.stdout.splitlines() if l.startswith("RESULT ")), None)
        if done.returncode != 0 or line is None:
            sys.exit(f"{mode} run failed:\n{done.stderr[-3000:]}")
        results[mode] = json.loads(line[len("RESULT "):])
        if mode != "prepare":  # as it comes: a long run shows what it has so far
            r = results[mode]
            print(f"  {mode}: {r['tokens_per_second']:.1f} tokens/s, peak RSS {r['peak_rss_mb']:.0f} MB "
                  f"(load average {_load()})", flush=True)
    results.pop("prepare")
    load.append(_load())

    mem_key = "peak_gpu_mb" if any("peak_gpu_mb" in r for r in results.values()) else "peak_rss_mb"
    print(f"model {args.model}, {args.steps} steps x {args.batch_size} rows, max_length {args.max_length}, "
          f"BELLE sample {args.sample_size}, {args.threads} threads, load average {load[0]} -> {load[1]}")
    print(f"{'recipe':<14}{'trained tokens':>15}{'seconds':>10}{'tokens/s':>11}{'peak MB':>10}")
    for name, r in results.items():
        print(f"{name:<14}{r['tokens']:>15}{r['train_runtime_s']:>10.2f}{r['tokens_per_second']:>11.1f}"
              f"{r[mem_key]:>10.1f}")
    for name, r in results.items():
        if "losses" in r:
            print(f"loss per step, {name}: " + " ".join(f"{x:.4f}" for x in r["losses"]))
    ratios = {}
    for precision in ("fp32", "bf16"):
        z, t = results.get(f"zhtune-{precision}"), results.get(f"trl-{precision}")
        if z and t:
            ratios[precision] = {"tokens_per_second": z["tokens_per_second"] / t["tokens_per_second"],
                                 "peak_memory": z[mem_key] / t[mem_key]}
            print(f"zhtune / TRL, {precision}: {ratios[precision]['tokens_per_second']:.2f}x tokens/s, "
                  f"{ratios[precision]['peak_memory']:.2f}x peak memory ({mem_key})")
    if args.output:
        Path(args.output).write_text(json.dumps({"args": vars(args), "load": load, "results": results,
                                                 "ratios": ratios}, indent=2))


if __name__ == "__main__":
    main()
