"""Peak memory and speed of multiple-choice scoring on long prompts: this tree against a git revision.

MMLU 5-shot has the longest prompts of the four benchmarks: the history subjects' few-shot prefixes
are ~2,500 tokens. Scoring them once held, per question, a copy of the prefix's keys and values (the
KV cache concatenation) -- memory grew with prompt length x batch. Default: SmolLM2-135M-Instruct,
fp32, the first 16 questions of the 4 subjects with the longest prompts and of 4 ordinary ones, 5-shot,
lm-eval style; each side in its own process (its peak RSS, model load included, is its own), the
revision first, then this tree, then the revision again (so a drift of the machine's load shows).

    python benchmarks/eval_memory.py [--ref 0fae2ac] [--per-subject 16] [--batch-tokens 4096]
        [--ref-batch-size 8] [--threads 2]

Printed: seconds, questions/s and peak RSS of each run, the speed ratio, identical predictions.
"""
from __future__ import annotations

import argparse
import inspect
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUBJECTS = ["high_school_european_history", "high_school_us_history", "high_school_world_history",
            "professional_law", "abstract_algebra", "anatomy", "college_biology", "marketing"]


def worker(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    from zhtune.data.benchmarks import load_benchmark
    from zhtune.eval.choice import score_choice
    from zhtune.models.loading import load_model

    loaded = load_model(args.model)
    questions = [q for s in SUBJECTS
                 for q in load_benchmark("mmlu", data_dir=args.data_dir, subjects=[s])[: args.per_subject]]
    params = inspect.signature(score_choice).parameters
    size = ({"batch_tokens": args.batch_tokens} if "batch_tokens" in params
            else {"batch_size": args.ref_batch_size})
    t0 = time.perf_counter()
    preds = score_choice(loaded.model, loaded.tokenizer, questions, shots=5, data_dir=args.data_dir,
                         progress=False, style="lm-eval", **size)
    seconds = time.perf_counter() - t0
    Path(args.out).write_text(json.dumps({
        "seconds": seconds, "questions": len(preds), "size": size,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "preds": [p.pred for p in preds], "fallbacks": sum(not p.used_cache for p in preds)}))


def run(side: str, src: Path, args, out: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src)}
    cmd = [sys.executable, __file__, *sys.argv[1:], "--worker", "--out", str(out)]
    subprocess.run(cmd, check=True, env=env)
    r = json.loads(out.read_text())
    print(f"{side:22s} {r['questions']} questions in {r['seconds']:7.1f} s "
          f"({r['questions'] / r['seconds']:.3f}/s), peak RSS {r['peak_rss_mb'] / 1024:.2f} GB, "
          f"{r['size']}, {r['fallbacks']} prefix fallbacks", flush=True)
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="builtin:smollm2-135m-instruct")
    ap.add_argument("--ref", default="0fae2ac", help="Git revision to compare with.")
    ap.add_argument("--per-subject", type=int, default=16)
    ap.add_argument("--batch-tokens", type=int, default=4096, help="This tree's token budget.")
    ap.add_argument("--ref-batch-size", type=int, default=8, help="The revision's questions per pass.")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data-dir", default=os.environ.get("ZHTUNE_DATA_DIR"))
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    with tempfile.TemporaryDirectory() as tmp:
        ref_tree = Path(tmp) / "ref"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(ref_tree), args.ref],
                       check=True, capture_output=True)
        try:
            runs = [run(f"{args.ref} (before)", ref_tree / "src", args, Path(tmp) / "a.json"),
                    run("this tree", ROOT / "src", args, Path(tmp) / "b.json"),
                    run(f"{args.ref} (after)", ref_tree / "src", args, Path(tmp) / "c.json")]
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(ref_tree)],
                           check=False, capture_output=True)
    before, ours, after = runs
    ref_seconds = (before["seconds"] + after["seconds"]) / 2
    same = sum(a == b for a, b in zip(ours["preds"], before["preds"]))
    print(f"speed, this tree / {args.ref} (mean of its two runs): {ref_seconds / ours['seconds']:.2f}x; "
          f"peak RSS {ours['peak_rss_mb'] / 1024:.2f} vs {before['peak_rss_mb'] / 1024:.2f} GB; "
          f"identical predictions {same}/{len(ours['preds'])}")


if __name__ == "__main__":
    main()
