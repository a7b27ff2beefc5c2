"""How fast is zhtune's multiple-choice scorer, and how much of the machine does it use?

In one run, on the same questions (default: 5-shot C-Eval val, the first --n questions in loader
order, i.e. whole subjects), this compares

- zhtune: ``zhtune.eval.choice.score_choice`` (one forward pass per question, the subject's
  few-shot prefix computed once and its KV cache shared, LM head only at the last position), and
- plain: what many scripts do -- one sequence per option (prompt + letter, 4 per question), full
  logits at every position, no cache, padded batches in dataset order; the option whose letter
  has the highest log-probability wins.

Both pick the argmax of the same next-token letter logits, so the predictions should be identical.
The same questions are then scored in the cloze formulation (``score_cloze``: each option's text
by log-likelihood, sharing the same prefix cache); its time over zhtune's letter time is the cloze
cost ratio (target <= 2x).

Model-FLOPs utilisation (MFU) = 2 x non-embedding parameters x tokens processed / time, against two
matmul peaks measured in the same run with a large torch.mm: the model dtype's, and the best the
machine reaches in fp32 or bf16 (on a CPU with avx512_bf16 or AMX, bf16 is about 2.7x fp32: the
second MFU says how much of the hardware a run in the model's dtype leaves unused).
Tokens processed are the real (non-padding) tokens that went through the decoder; attention FLOPs
and the LM head are not counted as useful work.

    python benchmarks/eval_speed.py [--model builtin:smollm2-135m-instruct] [--n 26] [--shots 5]
"""
from __future__ import annotations

import argparse
import time

import torch
from rich.console import Console
from rich.table import Table

from zhtune.data.benchmarks import LETTERS, few_shot_examples, load_benchmark
from zhtune.data.prompts import choice_prompt, encode_prompt
from zhtune.eval.choice import letter_token_ids, score_choice, score_cloze
from zhtune.models.loading import load_model


def measure_peak(device: torch.device, dtype: torch.dtype, size: int = 2048, reps: int = 10) -> float:
    """Best-of-``reps`` FLOP/s of one size x size matmul (the achievable dense peak here)."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(reps + 2):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        torch.mm(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return 2 * size ** 3 / best


class TokenCounter:
    """Counts the real tokens entering the decoder body (a forward pre-hook)."""

    def __init__(self, body):
        self.tokens = 0
        self.padded = 0
        self.handle = body.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        mask = kwargs.get("attention_mask")
        self.padded += ids.numel()
        self.tokens += int(mask[:, -ids.shape[1]:].sum()) if mask is not None else ids.numel()

    def reset(self):
        self.tokens = self.padded = 0


def plain_scores(model, tokenizer, questions, shots, data_dir, batch_size) -> list[str]:
    """The reference: 4 sequences per question, full logits, no cache, right-padded batches."""
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    seqs: list[tuple[int, int, list[int]]] = []  # (question index, letter index, token ids)
    for qi, q in enumerate(questions):
        prompt = choice_prompt(q.benchmark, q.subject, few_shot_examples(q.benchmark, q.subject, shots, data_dir), q)
        ids = encode_prompt(tokenizer, prompt)
        letter_ids = letter_token_ids(tokenizer, q.benchmark)
        for li, letter in enumerate(LETTERS):
            seqs.append((qi, li, ids + [letter_ids[letter]]))
    logprob = torch.full((len(questions), len(LETTERS)), float("-inf"))
    with torch.inference_mode():
        for start in range(0, len(seqs), batch_size):
            chunk = seqs[start:start + batch_size]
            width = max(len(s) for _, _, s in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for i, (_, _, s) in enumerate(chunk):
                ids[i, : len(s)] = torch.tensor(s)
                mask[i, : len(s)] = 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            for i, (qi, li, s) in enumerate(chunk):  # the letter's log-prob given the prompt
                logprob[qi, li] = torch.log_softmax(logits[i, len(s) - 2].float(), dim=-1)[s[-1]].cpu()
    return [LETTERS[int(row.argmax())] for row in logprob]


def non_embedding_params(model) -> int:
    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    total = sum(p.numel() for p in model.parameters())
    return total - embed.numel() - (0 if head is embed else head.numel())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="builtin:smollm2-135m-instruct", help="Any model source spec.")
    ap.add_argument("--benchmark", default="ceval", choices=["ceval", "cmmlu", "mmlu"])
    ap.add_argument("--n", type=int, default=26,
                    help="Questions: the first N in loader order (26: about one subject's worth).")
    ap.add_argument("--shots", type=int, default=5, help="Few-shot examples.")
    ap.add_argument("--batch-size", type=int, default=8, help="Sequences per forward pass (plain).")
    ap.add_argument("--batch-tokens", type=int, default=4096,
                    help="zhtune's question tokens per forward pass (eval.batch_tokens).")
    ap.add_argument("--data-dir", default=None, help="Local data folder (default ZHTUNE_DATA_DIR).")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's).")
    ap.add_argument("--no-plain", action="store_true",
                    help="Skip the plain scorer (minutes): only zhtune's letter and cloze times.")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    loaded = load_model(args.model)
    model, tok = loaded.model, loaded.tokenizer
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    questions = load_benchmark(args.benchmark, data_dir=args.data_dir)[: args.n]
    n_subjects = len({q.subject for q in questions})
    params = non_embedding_params(model)
    counter = TokenCounter(model.get_base_model().model if hasattr(model, "get_base_model") else model.model)

    def timed(run):
        """The run's result, seconds, and the real and padded tokens it put through the decoder."""
        counter.reset()
        t0 = time.perf_counter()
        result = run()
        return result, time.perf_counter() - t0, counter.tokens, counter.padded

    # Warm-up (allocator, kernels) of each scorer, then the timed runs.
    score_choice(model, tok, questions[:2], shots=args.shots, data_dir=args.data_dir, progress=False)
    ours, t_ours, tokens_ours, padded_ours = timed(lambda: score_choice(
        model, tok, questions, shots=args.shots, data_dir=args.data_dir,
        batch_tokens=args.batch_tokens, progress=False))
    plain, t_plain, tokens_plain, padded_plain = timed(lambda: None if args.no_plain else plain_scores(
        model, tok, questions, args.shots, args.data_dir, args.batch_size))
    score_cloze(model, tok, questions[:2], shots=args.shots, data_dir=args.data_dir, progress=False)
    cloze, t_cloze, tokens_cloze, padded_cloze = timed(lambda: score_cloze(
        model, tok, questions, shots=args.shots, data_dir=args.data_dir,
        batch_tokens=args.batch_tokens, progress=False))
    peaks = {d: measure_peak(device, d) for d in dict.fromkeys((dtype, torch.float32, torch.bfloat16))}
    peak, best_dtype = peaks[dtype], max(peaks, key=peaks.get)

    same = sum(a.pred == b for a, b in zip(ours, plain or []))
    fallbacks = sum(not p.used_cache for p in ours)
    table = Table(title=f"{args.benchmark} {args.shots}-shot, {len(questions)} questions "
                        f"({n_subjects} subjects), {args.model} ({dtype}, {device}, "
                        f"{torch.get_num_threads()} threads)")
    for col in ("scorer", "seconds", "questions/s", "tokens", "padding", "TFLOP/s", "MFU", "MFU (best peak)"):
        table.add_column(col, justify="left" if col == "scorer" else "right")
    rows = [("zhtune", t_ours, tokens_ours, padded_ours),
            ("plain (4 seqs/question)", t_plain, tokens_plain, padded_plain),
            ("zhtune cloze", t_cloze, tokens_cloze, padded_cloze)]
    for name, t, tokens, padded in rows[::2] if plain is None else rows:
        flops = 2 * params * tokens / t
        table.add_row(name, f"{t:.1f}", f"{len(questions) / t:.2f}", f"{tokens:,}",
                      f"{(padded - tokens) / padded:.0%}", f"{flops / 1e12:.3f}", f"{flops / peak:.0%}",
                      f"{flops / peaks[best_dtype]:.0%}")
    console = Console()
    console.print(table)
    if plain is not None:
        console.print(f"speed-up: {t_plain / t_ours:.1f}x (target >= 4x)   identical predictions: "
                      f"{same}/{len(questions)}   prefix-cache fallbacks: {fallbacks}")
    console.print(f"cloze / letter time: {t_cloze / t_ours:.2f}x (target <= 2x)   cloze acc "
                  f"{sum(p.correct for p in cloze) / len(cloze):.3f}, acc_norm "
                  f"{sum(p.correct_norm for p in cloze) / len(cloze):.3f}")
    console.print("measured matmul peaks (2048^3 torch.mm): " + ", ".join(
        f"{str(d).replace('torch.', '')} {v / 1e12:.3f} TFLOP/s" for d, v in peaks.items())
                  + f"; MFU against {dtype}, best peak {best_dtype}   "
                  f"non-embedding params: {params / 1e6:.1f} M   "
                  f"accuracy: {sum(p.correct for p in ours) / len(ours):.3f}")


if __name__ == "__main__":
    main()
