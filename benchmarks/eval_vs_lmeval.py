"""zhtune vs lm-evaluation-harness 0.4.13 on the same questions, in lm-eval style.

Default: builtin:smollm2-135m-instruct, 5-shot, the first 8 questions of every subject of C-Eval val
(416) and MMLU test (456). Each side runs in its own subprocess (so each one's peak RSS is its own):

- lm-eval: its own tasks (``ceval-valid``, ``mmlu``) over the local data
  (``zhtune.data.lmeval_local``), its ``HFLM`` on the same local model folder, fp32 on the CPU;
  timed from building the requests to the last log-likelihood (``task.build_all_requests`` +
  ``HFLM.loglikelihood``, which is what ``lm_eval.simple_evaluate`` spends its time on), the model
  load excluded. The prediction is the argmax of the four log-likelihoods (lm-eval's ``acc``).
- zhtune: ``load_benchmark`` + ``score_choice`` (style lm-eval), the model load excluded.

Printed: identical predictions (%), questions/s of each and the ratio, peak RSS of each.

    python benchmarks/eval_vs_lmeval.py [--per-subject 8] [--subjects-per-benchmark N]
        [--lm-eval-batch-size 1] [--threads 2] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

BENCHMARKS = {"ceval": ("ceval-valid", "ceval-valid_{}"), "mmlu": ("mmlu", "mmlu_{}")}
LETTERS = ["A", "B", "C", "D"]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def selection(args) -> list[tuple[str, str]]:
    """(benchmark, subject) pairs, the benchmarks interleaved, so that a run stopped early has
    covered all of them in proportion."""
    from itertools import zip_longest

    from zhtune.data.benchmarks import list_subjects

    per = [[(b, s) for s in list_subjects(b, args.data_dir)[: args.subjects_per_benchmark or None]]
           for b in args.benchmarks.split(",")]
    return [pair for row in zip_longest(*per) for pair in row if pair is not None]


def run_lmeval(args) -> dict:
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from zhtune.data.lmeval_local import lm_eval_tasks
    from zhtune.models.sources import resolve_model

    lm = HFLM(pretrained=str(resolve_model(args.model)), batch_size=args.lm_eval_batch_size,
              device="cpu", dtype="float32")
    manager = TaskManager()
    preds: dict[str, str] = {}
    subject_seconds: dict[str, float] = {}
    settings = f"HFLM batch_size={args.lm_eval_batch_size}, fp32, cpu, threads={args.threads}"
    tasks = {b: lm_eval_tasks(BENCHMARKS[b][0], args.data_dir, manager) for b in args.benchmarks.split(",")}
    for benchmark, subject in selection(args):
        task = tasks[benchmark][BENCHMARKS[benchmark][1].format(subject)]
        t0 = time.perf_counter()
        task.set_config(key="num_fewshot", value=args.shots)
        task.build_all_requests(limit=args.per_subject, rank=0, world_size=1)
        instances = sorted(task.instances, key=lambda i: (i.doc_id, i.idx))
        results = lm.loglikelihood(instances, disable_tqdm=True)
        subject_seconds[f"{benchmark}/{subject}"] = time.perf_counter() - t0
        lls: dict[int, list[float]] = {}
        for inst, (ll, _) in zip(instances, results):
            lls.setdefault(inst.doc_id, []).append(ll)
        for doc_id, row in lls.items():
            preds[f"{benchmark}/{subject}/{doc_id}"] = LETTERS[max(range(4), key=lambda k: row[k])]
        print(f"lm-eval {benchmark}/{subject}: {len(lls)} questions, {sum(subject_seconds.values()):.0f} s "
              f"so far", file=sys.stderr, flush=True)
        save(args, {"preds": preds, "subject_seconds": subject_seconds, "peak_rss_mb": peak_rss_mb(),
                    "settings": settings, "complete": False})
    return {"preds": preds, "subject_seconds": subject_seconds, "peak_rss_mb": peak_rss_mb(),
            "settings": settings}


def run_zhtune(args) -> dict:
    from zhtune.data.benchmarks import load_benchmark
    from zhtune.eval.choice import score_choice
    from zhtune.models.loading import load_model

    from zhtune.data.benchmarks import few_shot_examples
    from zhtune.data.prompts import choice_prompt, encode_prompt
    from zhtune.eval.choice import _decoder_parts

    loaded = load_model(args.model)
    preds: dict[str, str] = {}
    subject_seconds: dict[str, float] = {}
    settings = f"score_choice batch_tokens={args.batch_tokens}, fp32, cpu, threads={args.threads}"
    # Work done, in tokens through the decoder: zhtune's (prefix once + each question's own tokens)
    # and lm-eval's (each question's whole context once: its logits cache shares one forward pass
    # among the four one-token continuations). Their ratio bounds the possible speed-up.
    tokens = {"zhtune": 0, "full_prompts": 0}

    def count(module, a, kw):
        ids, mask = kw.get("input_ids"), kw.get("attention_mask")
        tokens["zhtune"] += int(mask[:, -ids.shape[1]:].sum()) if mask is not None else ids.numel()

    _decoder_parts(loaded.model)[0].register_forward_pre_hook(count, with_kwargs=True)
    # One subject per call, timed per subject like lm-eval (so a partial lm-eval run compares
    # on the same subjects); zhtune's batches never span subjects anyway.
    for benchmark, subject in selection(args):
        questions = load_benchmark(benchmark, data_dir=args.data_dir, subjects=[subject])[: args.per_subject]
        t0 = time.perf_counter()
        scored = score_choice(loaded.model, loaded.tokenizer, questions, shots=args.shots,
                              data_dir=args.data_dir, batch_tokens=args.batch_tokens, progress=False,
                              style="lm-eval")
        subject_seconds[f"{benchmark}/{subject}"] = time.perf_counter() - t0
        shots = few_shot_examples(benchmark, subject, args.shots, data_dir=args.data_dir)
        for i, p in enumerate(scored):
            preds[f"{benchmark}/{subject}/{i}"] = p.pred
            tokens["full_prompts"] += len(encode_prompt(loaded.tokenizer, choice_prompt(
                benchmark, subject, shots, p.question, "lm-eval")))
        save(args, {"preds": preds, "subject_seconds": subject_seconds, "peak_rss_mb": peak_rss_mb(),
                    "settings": settings, "tokens": tokens, "complete": False})
    return {"preds": preds, "subject_seconds": subject_seconds, "peak_rss_mb": peak_rss_mb(),
            "settings": settings, "tokens": tokens}


def save(args, result: dict) -> None:
    """The worker's results so far (lm-eval writes after every subject, so a run stopped early
    still reports its part with --report-only)."""
    path = Path(args.workdir) / f"{args.worker}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result), encoding="utf-8")
    tmp.replace(path)


def worker(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    result = run_lmeval(args) if args.worker == "lm-eval" else run_zhtune(args)
    save(args, {**result, "complete": True, "wall_seconds": time.perf_counter() - started})


def spawn(side: str, args) -> None:
    cmd = [sys.executable, __file__, *sys.argv[1:], "--worker", side]
    subprocess.run(cmd, check=True)


def load_results(args) -> dict:
    out = {}
    for side in ("zhtune", "lm-eval"):
        path = Path(args.workdir) / f"{side}.json"
        if path.is_file():
            out[side] = json.loads(path.read_text(encoding="utf-8"))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="builtin:smollm2-135m-instruct")
    ap.add_argument("--benchmarks", default="ceval,mmlu")
    ap.add_argument("--per-subject", type=int, default=8, help="First N questions of every subject.")
    ap.add_argument("--subjects-per-benchmark", type=int, default=0, help="Only the first N subjects (0: all).")
    ap.add_argument("--shots", type=int, default=5)
    ap.add_argument("--batch-tokens", type=int, default=4096,
                    help="zhtune's question tokens per forward pass (eval.batch_tokens).")
    ap.add_argument("--lm-eval-batch-size", type=int, default=1,
                    help="HFLM batch size (1: lm-eval's default; 'auto' peaked at 24 GB here).")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads of each side (1: on a shared, loaded machine more threads "
                         "than free cores make both sides many times slower).")
    ap.add_argument("--data-dir", default=os.environ.get("ZHTUNE_DATA_DIR"))
    ap.add_argument("--only", choices=["lm-eval", "zhtune"], help="Run one side only.")
    ap.add_argument("--json", help="Also write the summary here.")
    ap.add_argument("--workdir", default="/tmp/eval_vs_lmeval",
                    help="Each side's results (zhtune.json, lm-eval.json), written as they come.")
    ap.add_argument("--report-only", action="store_true",
                    help="Only print the comparison of what --workdir holds (e.g. a stopped run).")
    ap.add_argument("--worker", choices=["lm-eval", "zhtune"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    if args.worker:
        return worker(args)
    if not args.report_only:
        for side in [args.only] if args.only else ["zhtune", "lm-eval"]:
            (Path(args.workdir) / f"{side}.json").unlink(missing_ok=True)
            spawn(side, args)
    report(args, load_results(args))


def report(args, results: dict) -> None:
    """Identical predictions, questions/s and peak RSS, on the subjects both sides finished."""
    common = set.intersection(*(set(r["subject_seconds"]) for r in results.values()))
    print(f"\nmodel {args.model}, {args.shots}-shot, first {args.per_subject} per subject of "
          f"{args.benchmarks}, lm-eval style, {len(common)} subjects scored by "
          f"{' and '.join(results)}")
    summary = {"model": args.model, "shots": args.shots, "per_subject": args.per_subject,
               "benchmarks": args.benchmarks, "subjects": len(common), "sides": {}}
    qps = {}
    for side, r in results.items():
        keys = [k for k in r["preds"] if k.rsplit("/", 1)[0] in common]
        seconds = sum(r["subject_seconds"][s] for s in common)
        qps[side] = len(keys) / seconds if seconds else float("nan")
        state = "" if r.get("complete") else ", stopped early"
        print(f"{side:8s} {len(keys)} questions in {seconds:.1f} s: {qps[side]:.3f} questions/s, "
              f"peak RSS {r['peak_rss_mb'] / 1024:.2f} GB [{r['settings']}{state}]")
        summary["sides"][side] = {"questions": len(keys), "seconds": seconds, "questions_per_second": qps[side],
                                  "peak_rss_mb": r["peak_rss_mb"], "settings": r["settings"],
                                  "complete": bool(r.get("complete"))}
    if len(results) == 2:
        z, l = results["zhtune"]["preds"], results["lm-eval"]["preds"]
        keys = sorted(k for k in set(z) & set(l) if k.rsplit("/", 1)[0] in common)
        differ = [k for k in keys if z[k] != l[k]]
        same = len(keys) - len(differ)
        print(f"identical predictions: {same}/{len(keys)} = {100 * same / max(len(keys), 1):.2f}% "
              f"(differ: {', '.join(differ[:10]) or 'none'})")
        print(f"zhtune is {qps['zhtune'] / qps['lm-eval']:.1f}x lm-eval's questions/s")
        work = results["zhtune"].get("tokens")
        if work:  # over all subjects zhtune scored
            print(f"tokens through the decoder: zhtune {work['zhtune']:,}, whole prompts (lm-eval's "
                  f"work) {work['full_prompts']:,}: at most {work['full_prompts'] / work['zhtune']:.1f}x "
                  f"fewer FLOPs")
        summary.update({"identical": same, "compared": len(keys), "differ": differ,
                        "speed_ratio": qps["zhtune"] / qps["lm-eval"]})
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
