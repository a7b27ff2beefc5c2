"""Where does letter scoring spend its time, and how close to the machine's fp32 rate is it?

Scores the first --per-subject questions of the first --subjects subjects of each benchmark
(default: 4 subjects of C-Eval val and of MMLU test, 8 questions each, 5-shot, lm-eval style) under
torch's profiler, after one unprofiled warm-up subject, and prints per operator: share of the
time, milliseconds, and for the matrix products (``aten::mm``, ``aten::addmm``) and the CPU flash
attention their GFLOP/s. The attention's FLOPs are counted from its shapes (4 x query rows x keys x
head dim per head; half the keys when causal), the profiler's own count for the products. Next to
them, the fp32 rate of a large linear layer measured in the same run: the ceiling for the products.

    python benchmarks/eval_profile.py [--subjects 4] [--per-subject 8] [--threads 1]
"""
from __future__ import annotations

import argparse
import os
import time

import torch

FLASH = "aten::_scaled_dot_product_flash_attention_for_cpu"
PRODUCTS = ("aten::mm", "aten::addmm")


def linear_rate(rows: int = 2048, inputs: int = 576, outputs: int = 1536, reps: int = 20) -> float:
    """GFLOP/s of one fp32 linear layer of the size of SmolLM2's MLP, the best of ``reps``."""
    x, w = torch.randn(rows, inputs), torch.randn(outputs, inputs)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.nn.functional.linear(x, w)
        best = min(best, time.perf_counter() - t0)
    return 2 * rows * inputs * outputs / best / 1e9


def attention_flops(event) -> float:
    """4 x batch x query heads x query rows x keys x head dim (halved when causal)."""
    (b, h, lq, d), (_, _, lk, _) = event.input_shapes[0], event.input_shapes[1]
    causal = bool(event.concrete_inputs[4]) if len(event.concrete_inputs) > 4 else False
    return 4 * b * h * lq * lk * d / (2 if causal else 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="builtin:smollm2-135m-instruct")
    ap.add_argument("--benchmarks", default="ceval,mmlu")
    ap.add_argument("--subjects", type=int, default=4, help="First N subjects of each benchmark.")
    ap.add_argument("--per-subject", type=int, default=8)
    ap.add_argument("--shots", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data-dir", default=os.environ.get("ZHTUNE_DATA_DIR"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from torch.profiler import ProfilerActivity, profile

    from zhtune.data.benchmarks import list_subjects, load_benchmark
    from zhtune.eval.choice import score_choice
    from zhtune.models.loading import load_model

    loaded = load_model(args.model)
    questions = [q for b in args.benchmarks.split(",") for s in list_subjects(b, args.data_dir)[: args.subjects]
                 for q in load_benchmark(b, data_dir=args.data_dir, subjects=[s])[: args.per_subject]]

    def score(qs):
        return score_choice(loaded.model, loaded.tokenizer, qs, shots=args.shots, data_dir=args.data_dir,
                            progress=False, style="lm-eval")

    score(questions[: args.per_subject])  # warm-up: first calls, allocator
    t0 = time.perf_counter()
    score(questions)
    plain_seconds = time.perf_counter() - t0
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True, with_flops=True) as prof:
        score(questions)
    events = prof.events()
    flash_flops = sum(attention_flops(e) for e in events if e.name == FLASH)
    table = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in table)
    print(f"{args.model}, {args.benchmarks}: {len(questions)} questions, {args.shots}-shot, lm-eval style, "
          f"{args.threads} thread(s); {plain_seconds:.1f} s unprofiled")
    print(f"fp32 linear layer (2048 x 576 -> 1536), best of 20: {linear_rate():.0f} GFLOP/s")
    print(f"{'operator':52s} {'share':>6s} {'ms':>9s} {'GFLOP/s':>8s}")
    for e in sorted(table, key=lambda e: -e.self_cpu_time_total)[:15]:
        flops = flash_flops if e.key == FLASH else e.flops if e.key in PRODUCTS else 0
        rate = f"{flops / (e.self_cpu_time_total * 1e3):8.0f}" if flops else ""
        print(f"{e.key[:52]:52s} {100 * e.self_cpu_time_total / total:5.1f}% "
              f"{e.self_cpu_time_total / 1e3:9.0f} {rate}")


if __name__ == "__main__":
    main()
