"""What one question, one probe character and one training token cost on the Qwen built-in: the
figures that size the Qwen study (configs/qwen-study.yaml) within its compute budget.

Runs, in one process with ``--threads`` torch threads (default 1):
* C-Eval val, CMMLU test, MMLU test, ``--questions`` each (round-robin over subjects), 0-shot,
  lm-eval style, letter and cloze (``zhtune.eval.suite.evaluate_model``, as the study evaluates);
* GSM8K test, ``--gsm8k`` questions, 5-shot greedy generation (at most 256 new tokens);
* bits per character: ``--chars`` characters of each probe (zh, en, zh_control, en_control);
* LoRA training (the study's recipe: Qwen defaults r8/alpha32 on all linear layers, packed rows
  of 256 tokens, batch 4, bf16 autocast where the CPU has it) for ``--train-steps`` steps.
and prints per item the wall and the process CPU seconds (CPU time is what the load of other
jobs inflates least), with the load average before and after, as JSON.

    python benchmarks/qwen_study_cost.py --data-dir /work/shared/data [--threads 1] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

MODEL = "builtin:qwen2.5-coder-0.5b-instruct"


def clock():
    return time.perf_counter(), time.process_time()


def since(t0) -> dict:
    wall, cpu = clock()
    return {"wall_s": round(wall - t0[0], 2), "cpu_s": round(cpu - t0[1], 2)}


def record(result: dict, key: str, value: dict, out: Path | None) -> None:
    """One measurement: printed and written at once, so that a later failure keeps it."""
    result[key] = value
    print(key, json.dumps(value), flush=True)
    if out:
        out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=os.environ.get("ZHTUNE_DATA_DIR"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--questions", type=int, default=8, help="per multiple-choice benchmark")
    parser.add_argument("--gsm8k", type=int, default=2)
    parser.add_argument("--chars", type=int, default=2000, help="per perplexity probe")
    parser.add_argument("--train-steps", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--only", default="eval,gsm8k,perplexity,train", help="which parts to measure")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from zhtune.config import EvalConfig, load_config, shipped_config
    from zhtune.eval.suite import _perplexity, evaluate_model
    from zhtune.models.loading import load_model

    result: dict = {"model": MODEL, "threads": args.threads, "load_before": os.getloadavg()}
    loaded = load_model(MODEL)
    parts = set(args.only.split(","))
    for bench in ("ceval", "cmmlu", "mmlu") if "eval" in parts else ():
        for formulation in ("letter", "cloze"):
            cfg = EvalConfig(benchmarks=[bench], formulation=formulation, shots=0,
                             max_per_benchmark=args.questions, perplexity=False)
            t0 = clock()
            summary = evaluate_model(loaded.model, loaded.tokenizer, loaded.family, cfg, args.data_dir,
                                     progress=False).summary
            cost = since(t0)
            n = summary["throughput"]["questions"]
            record(result, f"{bench}/{formulation}", {
                **cost, "questions": n, "cpu_s_per_question": round(cost["cpu_s"] / n, 3),
                "wall_s_per_question": round(cost["wall_s"] / n, 3), "load": os.getloadavg()[0]}, args.out)
    if "gsm8k" in parts:
        cfg = EvalConfig(benchmarks=["gsm8k"], gsm8k_shots=5, limit=args.gsm8k, batch_size=args.gsm8k,
                         perplexity=False)
        t0 = clock()
        evaluate_model(loaded.model, loaded.tokenizer, loaded.family, cfg, args.data_dir, progress=False)
        cost = since(t0)
        record(result, "gsm8k/5-shot", {**cost, "questions": args.gsm8k,
                                        "cpu_s_per_question": round(cost["cpu_s"] / args.gsm8k, 3),
                                        "wall_s_per_question": round(cost["wall_s"] / args.gsm8k, 3),
                                        "load": os.getloadavg()[0]}, args.out)
    if "perplexity" in parts:
        t0 = clock()
        ppl = _perplexity(loaded.model, loaded.tokenizer, EvalConfig(perplexity_chars=args.chars, batch_size=8),
                          args.data_dir)
        cost = since(t0)
        record(result, "perplexity", {**cost, "chars": 4 * args.chars,
                                      "cpu_s_per_1000_chars": round(cost["cpu_s"] / (4 * args.chars) * 1000, 3),
                                      "bits_per_char": {k: round(v["bits_per_char"], 4) for k, v in ppl.items()},
                                      "load": os.getloadavg()[0]}, args.out)
    del loaded

    if args.train_steps and "train" in parts:
        from zhtune.train.lora import train_lora

        train_cfg = load_config(shipped_config("qwen-study"), [
            f"train.max_steps={args.train_steps}", "train.probes.every_steps=null", "data.sample_size=64",
            "data.val_size=0", f"train.save_steps={10 * args.train_steps}"])
        with tempfile.TemporaryDirectory() as out:
            t0 = clock()
            metrics = train_lora(train_cfg, out, data_dir=args.data_dir, resume=False)
            cost = since(t0)
        record(result, "train", {**cost, "steps": metrics.get("steps"), "train_tokens": metrics.get("train_tokens"),
                                 "tokens_per_second": metrics.get("tokens_per_second"),
                                 "train_runtime": metrics.get("train_runtime"), "load": os.getloadavg()[0]},
               args.out)
    result["load_after"] = os.getloadavg()
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
