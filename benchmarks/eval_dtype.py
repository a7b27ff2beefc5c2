"""Does evaluation in bf16 on the CPU give the predictions of fp32? Agreement and speed, one run.

Three ways to score the same questions (default: SmolLM2-135M-Instruct, C-Eval val 5-shot, the
first 4 questions of every subject = 208, lm-eval style, letters):

- fp32: the reference;
- bf16 weights: the model cast to bfloat16 (``--dtype bfloat16``), norms and head included;
- bf16 autocast: fp32 weights, the decoder's matrix products in bf16 under ``torch.autocast``,
  the residual stream, the norms, the softmax and the LM head in fp32;
- bf16 matmul inputs: everything fp32, but oneDNN rounds the inputs of fp32 matrix products to
  bf16 (AMX) and accumulates and returns fp32 (``torch.backends.mkldnn.matmul.fp32_precision``).

Printed per variant: identical predictions with fp32 (the bar is 99.5%), the largest difference of
a letter probability, seconds and the speed-up over fp32. And what screening would gain: scoring
in the variant and re-scoring in fp32 only the questions whose top-two letter log-probabilities are
closer than twice the largest error seen (the smallest margin that sample says is safe). Its
speed-up is ``1 / (1/s + f)`` for a variant s times faster with a share f re-scored: an upper
bound, since the subject's few-shot prefix would have to be run again in fp32 too.

    python benchmarks/eval_dtype.py [--benchmark ceval] [--per-subject 4] [--shots 5] [--threads 2]
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import time
from unittest import mock

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="builtin:smollm2-135m-instruct")
    ap.add_argument("--benchmark", default="ceval")
    ap.add_argument("--per-subject", type=int, default=4)
    ap.add_argument("--shots", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data-dir", default=os.environ.get("ZHTUNE_DATA_DIR"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from zhtune.data.benchmarks import list_subjects, load_benchmark
    from zhtune.eval import choice
    from zhtune.models.loading import load_model

    questions = [q for s in list_subjects(args.benchmark, args.data_dir)
                 for q in load_benchmark(args.benchmark, data_dir=args.data_dir, subjects=[s])[: args.per_subject]]
    loaded = load_model(args.model)
    model, tok = loaded.model, loaded.tokenizer
    real_run_body = choice._run_body

    def autocast_body(*a, **kw):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return real_run_body(*a, **kw)

    def score(label: str, patch=None):
        with (contextlib.nullcontext() if patch is None else mock.patch.object(choice, "_run_body", patch)):
            t0 = time.perf_counter()
            preds = choice.score_choice(model, tok, questions, shots=args.shots, data_dir=args.data_dir,
                                        progress=False, style="lm-eval")
            return label, preds, time.perf_counter() - t0

    results = [score("fp32"), score("bf16 autocast", autocast_body)]
    with _mkldnn_matmul_precision("bf16"):
        results.append(score("bf16 matmul inputs"))
    model.to(torch.bfloat16)
    results.append(score("bf16 weights"))
    _, ref, ref_seconds = results[0]
    print(f"{args.model}, {args.benchmark} {args.shots}-shot, first {args.per_subject} per subject "
          f"({len(questions)} questions), {args.threads} threads")
    for label, preds, seconds in results:
        same = sum(a.pred == b.pred for a, b in zip(preds, ref))
        diff = max(abs(a.probs[x] - b.probs[x]) for a, b in zip(preds, ref) for x in a.probs)
        speed = ref_seconds / seconds
        print(f"{label:18s} identical {same}/{len(ref)} = {100 * same / len(ref):.1f}%, largest "
              f"probability difference {diff:.4f}, {seconds:.1f} s ({speed:.2f}x fp32)")
        error = max(_log_gap_error(a, b) for a, b in zip(preds, ref))
        if error > 0:
            rescored = sum(_margin(a) < 2 * error for a in preds) / len(preds)
            print(f"{'':18s} screening: largest log-probability gap error {error:.4f}; margin below "
                  f"{2 * error:.4f}: {100 * rescored:.1f}% re-scored; at most "
                  f"{1 / (1 / speed + rescored):.2f}x fp32")


@contextlib.contextmanager
def _mkldnn_matmul_precision(precision: str):
    """oneDNN's precision for fp32 matrix products, restored after."""
    settings = torch.backends.mkldnn.matmul
    before = settings.fp32_precision
    settings.fp32_precision = precision
    try:
        yield
    finally:
        settings.fp32_precision = before


def _logs(p) -> list[float]:
    return [math.log(max(p.probs[x], 1e-30)) for x in sorted(p.probs)]


def _log_gap_error(p, ref) -> float:
    """Largest error in a difference of two letters' log-probabilities (what the argmax compares)."""
    a, b = _logs(p), _logs(ref)
    return max(abs((a[i] - a[j]) - (b[i] - b[j])) for i in range(len(a)) for j in range(len(a)))


def _margin(p) -> float:
    """Log-probability of the predicted letter minus the runner-up's."""
    top, second = sorted(_logs(p), reverse=True)[:2]
    return top - second


if __name__ == "__main__":
    main()
