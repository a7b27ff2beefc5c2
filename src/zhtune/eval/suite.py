"""Evaluate a loaded model (and optionally several adapters / LoRA scales) into output folders.

The folder format is the contract with the analysis stage (docs/ARCHITECTURE.md): ``summary.json``
(accuracy, n and standard error per benchmark, category and subject; settings and their
fingerprint; perplexity; throughput) and ``predictions.jsonl`` (one line per question).
"""
from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from zhtune import __version__
from zhtune.config import EvalConfig, ModelConfig, fingerprint
from zhtune.errors import UserError
from zhtune.io import atomic_write_json, atomic_write_jsonl, default_data_dir

log = logging.getLogger(__name__)

MULTIPLE_CHOICE = ("ceval", "cmmlu", "mmlu")


@dataclass
class EvalResult:
    summary: dict
    predictions: list[dict]


# ----------------------------------------------------------------------------- questions

def _select_subjects(benchmarks: Sequence[str], subjects: Sequence[str] | None, data_dir) -> dict:
    """Per multiple-choice benchmark: the requested subjects it has (None: all of them).

    A subject list may mix benchmarks (``computer_network,abstract_algebra``); a benchmark with
    none of them is skipped, a name no selected benchmark has is an error."""
    from zhtune.data.benchmarks import list_subjects

    mc = [b for b in benchmarks if b in MULTIPLE_CHOICE]
    if not subjects:
        return {b: None for b in mc}
    chosen, seen = {}, set()
    for b in mc:
        known = set(list_subjects(b, data_dir))
        mine = [s for s in subjects if s in known]
        seen.update(mine)
        if mine:
            chosen[b] = mine
        else:
            log.warning("%s: none of the requested subjects; skipped", b)
    unknown = [s for s in subjects if s not in seen]
    if unknown and mc:
        raise UserError(f"--subjects: {', '.join(unknown)} not found in {', '.join(mc)} "
                        f"(`zhtune data check` lists the subjects)")
    return chosen


def _first_per_subject(questions: list, limit: int | None) -> list:
    if limit is None:
        return questions
    taken: dict[str, int] = defaultdict(int)
    out = []
    for q in questions:
        if taken[q.subject] < limit:
            taken[q.subject] += 1
            out.append(q)
    return out


def _round_robin(questions: list, cap: int | None) -> list:
    """At most ``cap`` questions spread over the subjects (``round_robin``), kept in their original
    order."""
    from zhtune.data.benchmarks import round_robin

    if cap is None or len(questions) <= cap:
        return questions
    keep = {q.key for q in round_robin(questions, cap)}
    return [q for q in questions if q.key in keep]


def load_questions(eval_cfg: EvalConfig, data_dir=None) -> dict[str, list]:
    """The questions of every selected benchmark, deterministic: ``limit`` = first N per subject
    (GSM8K: first N overall), then ``max_per_benchmark`` taken round-robin over subjects."""
    from zhtune.data.benchmarks import default_split, load_benchmark

    per_benchmark = _select_subjects(eval_cfg.benchmarks, eval_cfg.subjects, data_dir)
    out: dict[str, list] = {}
    for b in eval_cfg.benchmarks:
        if b == "gsm8k":
            qs = load_benchmark("gsm8k", default_split("gsm8k"), data_dir=data_dir)
            out[b] = qs[: eval_cfg.limit] if eval_cfg.limit else qs
        elif b in per_benchmark:
            qs = load_benchmark(b, default_split(b), data_dir=data_dir, subjects=per_benchmark[b])
            out[b] = _first_per_subject(qs, eval_cfg.limit)
        if b in out:
            out[b] = _round_robin(out[b], eval_cfg.max_per_benchmark)
    return out


def eval_settings(eval_cfg: EvalConfig) -> dict:
    """What decides the question scores (batch size and device do not); fingerprinted with the
    question keys. Perplexity is not in it: each probe records the characters it scored."""
    from zhtune.data.benchmarks import default_split

    return {
        "benchmarks": list(eval_cfg.benchmarks),
        "splits": {b: default_split(b) for b in eval_cfg.benchmarks},
        "shots": eval_cfg.shots, "gsm8k_shots": eval_cfg.gsm8k_shots, "gsm8k_cot": eval_cfg.gsm8k_cot,
        "chat": eval_cfg.chat, "limit": eval_cfg.limit, "subjects": eval_cfg.subjects,
        "max_per_benchmark": eval_cfg.max_per_benchmark,
        "max_new_tokens": eval_cfg.max_new_tokens,
    }


# ----------------------------------------------------------------------------- aggregation

def accuracy_stats(correct: Sequence[bool]) -> dict:
    """Accuracy, n and the binomial standard error sqrt(p(1-p)/n)."""
    n = len(correct)
    p = sum(correct) / n if n else 0.0
    return {"accuracy": p, "n": n, "stderr": math.sqrt(p * (1 - p) / n) if n else 0.0}


def _group_stats(rows: list[dict]) -> dict:
    by_category: dict[str, list[bool]] = defaultdict(list)
    by_subject: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_category[r["category"]].append(r["correct"])
        by_subject[r["subject"]].append(r)
    return {
        **accuracy_stats([r["correct"] for r in rows]), "metric": "accuracy",
        "categories": {c: accuracy_stats(v) for c, v in sorted(by_category.items())},
        "subjects": {s: {**accuracy_stats([r["correct"] for r in v]), "category": v[0]["category"]}
                     for s, v in sorted(by_subject.items())},
    }


def _base_row(q) -> dict:
    return {"key": q.key, "benchmark": q.benchmark, "subject": q.subject, "category": q.category,
            "split": q.split, "id": q.id}


def _choice_rows(preds) -> list[dict]:
    return [{**_base_row(p.question), "gold": p.question.answer, "pred": p.pred,
             "probs": {k: round(v, 6) for k, v in p.probs.items()}, "correct": p.correct}
            for p in preds]


def _gsm8k_rows(preds) -> list[dict]:
    return [{**_base_row(p.question), "gold": p.gold, "pred": p.extracted_flexible,
             "generation": p.generation, "extracted_strict": p.extracted_strict,
             "extracted_flexible": p.extracted_flexible, "correct_strict": p.correct_strict,
             "correct": p.correct} for p in preds]


# ----------------------------------------------------------------------------- evaluation

def _perplexity(model, tokenizer, eval_cfg: EvalConfig, data_dir) -> dict:
    from zhtune.eval.perplexity import bits_per_char, probe_texts

    if data_dir is None:
        reason = "no local data folder (the probe texts are read from belle/ and alpaca/)"
        log.warning("perplexity skipped: %s", reason)
        return {"skipped": reason}
    out = {}
    for lang in ("zh", "en"):
        texts = probe_texts(lang, data_dir, eval_cfg.perplexity_chars)
        r = bits_per_char(model, tokenizer, texts, batch_size=eval_cfg.batch_size)
        out[lang] = {"bits_per_char": r.bits_per_char, "chars": r.chars, "tokens": r.tokens}
    return out


def evaluate_model(model, tokenizer, family, eval_cfg: EvalConfig, data_dir=None, *,
                   label: str = "base", meta: dict | None = None, progress: bool = True) -> EvalResult:
    """Every selected benchmark (+ perplexity probes) on one model as it is now."""
    from zhtune.eval.choice import score_choice

    data_dir = default_data_dir(data_dir)
    questions = load_questions(eval_cfg, data_dir)
    settings = eval_settings(eval_cfg)
    keys = [q.key for b in eval_cfg.benchmarks for q in questions.get(b, [])]
    rows: list[dict] = []
    benchmarks: dict[str, dict] = {}
    scored_seconds = 0.0
    for b in eval_cfg.benchmarks:
        qs = questions.get(b)
        if not qs:
            continue
        log.info("[%s] %s: %d questions", label, b, len(qs))
        t0 = time.perf_counter()
        if b == "gsm8k":
            from zhtune.eval.generation import evaluate_gsm8k

            preds = evaluate_gsm8k(model, tokenizer, family, qs, shots=eval_cfg.gsm8k_shots,
                                   cot=eval_cfg.gsm8k_cot, data_dir=data_dir,
                                   batch_size=eval_cfg.batch_size,
                                   max_new_tokens=eval_cfg.max_new_tokens, chat=eval_cfg.chat,
                                   progress=progress)
            seconds = time.perf_counter() - t0
            b_rows = _gsm8k_rows(preds)
            flexible = accuracy_stats([r["correct"] for r in b_rows])
            strict = accuracy_stats([r["correct_strict"] for r in b_rows])
            entry = {**flexible, "metric": "accuracy_flexible", "accuracy_strict": strict["accuracy"],
                     "accuracy_flexible": flexible["accuracy"], "stderr_strict": strict["stderr"]}
        else:
            preds = score_choice(model, tokenizer, qs, shots=eval_cfg.shots, data_dir=data_dir,
                                 batch_size=eval_cfg.batch_size, chat=eval_cfg.chat, family=family,
                                 progress=progress)
            seconds = time.perf_counter() - t0
            b_rows = _choice_rows(preds)
            entry = _group_stats(b_rows)
            entry["cache_fallbacks"] = sum(not p.used_cache for p in preds)
        entry["seconds"] = round(seconds, 3)
        entry["questions_per_second"] = round(len(qs) / seconds, 3) if seconds else None
        scored_seconds += seconds
        benchmarks[b] = entry
        rows.extend(b_rows)

    t0 = time.perf_counter()
    perplexity = _perplexity(model, tokenizer, eval_cfg, data_dir) if eval_cfg.perplexity else None
    perplexity_seconds = time.perf_counter() - t0

    summary: dict[str, Any] = {
        "model": getattr(getattr(model, "config", None), "_name_or_path", None), "adapter": None,
        "adapter_scale": None, "family": getattr(family, "name", family), "label": label,
        **(meta or {}),
        "settings": settings,
        "settings_fingerprint": fingerprint(settings, keys),
        "benchmarks": benchmarks,
        "perplexity": perplexity,
        "throughput": {"questions": len(rows), "seconds": round(scored_seconds, 3),
                       "questions_per_second": round(len(rows) / scored_seconds, 3) if scored_seconds else None,
                       "perplexity_seconds": round(perplexity_seconds, 3)},
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "zhtune_version": __version__,
    }
    return EvalResult(summary=summary, predictions=rows)


def write_eval_output(result: EvalResult, out_dir) -> Path:
    """predictions.jsonl, then summary.json: a folder with summary.json is complete."""
    out = Path(out_dir)
    atomic_write_jsonl(out / "predictions.jsonl", result.predictions)
    atomic_write_json(out / "summary.json", result.summary)
    return out


# ----------------------------------------------------------------------------- several runs

def _save_settings(model_cfg: ModelConfig, eval_cfg: EvalConfig, data_dir, out: Path) -> None:
    """config.resolved.yaml in the experiment config's shape (model / data / eval), so that
    ``zhtune eval --config OUT/config.resolved.yaml`` repeats the run."""
    import yaml

    from zhtune.io import atomic_write_text

    doc = {"model": model_cfg.model_dump(mode="json"),
           "data": {"data_dir": str(data_dir) if data_dir else None},
           "eval": eval_cfg.model_dump(mode="json")}
    atomic_write_text(out / "config.resolved.yaml",
                      yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))


def run_eval(model_cfg: ModelConfig, eval_cfg: EvalConfig, out_dir, *, data_dir=None,
             adapters: Sequence[str] = (), scales: Sequence[float] = (1.0,),
             include_base: bool = True, progress: bool = True,
             adapter_labels: Sequence[str] | None = None) -> dict:
    """Load the base once; evaluate it and each adapter at each scale into ``OUT/<label>/``.

    Labels: ``base``, ``<adapter>`` (scale 1) and ``<adapter>@scale-<s>``; an adapter's name is
    its ``adapter_labels`` entry, else its training folder's name. ``OUT/index.json``
    lists them (written last, with each label as it completes)."""
    from zhtune.eval.adapters import (
        adapter_names,
        attach_adapters,
        resolve_adapter_dir,
        scale_label,
        use_adapter,
    )
    from zhtune.models.loading import load_model

    if not include_base and not adapters:
        raise UserError("nothing to evaluate: no adapters and the base model excluded")
    for a in adapters:  # before minutes of base evaluation, not after
        resolve_adapter_dir(a)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data_dir = default_data_dir(data_dir)
    _save_settings(model_cfg, eval_cfg.model_copy(update={"adapter_scales": list(scales)}), data_dir, out)
    loaded = load_model(model_cfg)
    model, tokenizer, family = loaded.model, loaded.tokenizer, loaded.family
    base_meta = {"model": model_cfg.name_or_path, "family": family.name,
                 "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
                 "device": str(next(model.parameters()).device)}
    index: dict[str, Any] = {"model": model_cfg.name_or_path, "runs": [], "labels": []}

    def record(label: str, result: EvalResult, adapter: str | None, scale: float | None):
        write_eval_output(result, out / label)
        index["runs"].append({"label": label, "dir": label, "adapter": adapter, "adapter_scale": scale,
                              "settings_fingerprint": result.summary["settings_fingerprint"]})
        index["labels"].append(label)
        atomic_write_json(out / "index.json", index)

    if include_base:
        result = evaluate_model(model, tokenizer, family, eval_cfg, data_dir, label="base",
                                meta=base_meta, progress=progress)
        record("base", result, None, None)
    if adapters:
        names = adapter_names(adapters, adapter_labels)
        peft_model, dirs = attach_adapters(model, adapters, names, base_name=model_cfg.name_or_path)
        for name in names:
            for scale in scales:
                label = scale_label(name, float(scale))
                meta = {**base_meta, "adapter": str(dirs[name]), "adapter_scale": float(scale)}
                with use_adapter(peft_model, name, float(scale)):
                    result = evaluate_model(peft_model, tokenizer, family, eval_cfg, data_dir,
                                            label=label, meta=meta, progress=progress)
                record(label, result, str(dirs[name]), float(scale))
    return index
