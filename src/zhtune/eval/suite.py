"""Evaluate a loaded model (and optionally several adapters / LoRA scales) into output folders.

The folder format is the contract with the analysis stage (docs/ARCHITECTURE.md): ``summary.json``
(accuracy, n and standard error per benchmark, category and subject; settings and their
fingerprint; perplexity; throughput), ``predictions.jsonl`` (one line per question) and, with
``write_prompts``, ``prompts.jsonl`` (the exact text each question was scored with).

Cloze results are a benchmark of their own, ``<benchmark>_cloze`` (keys ``ceval_cloze/<subject>/…``),
with the same entry schema as a letter benchmark; its headline ``accuracy`` is lm-eval's acc_norm
(log-likelihood per character), and ``accuracy_unnormalized`` is acc.
"""
from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from zhtune import __version__
from zhtune.artifacts import close_chunks, fingerprint, provenance, utc_timestamp, write_eval_index
from zhtune.config import EvalConfig, ModelConfig
from zhtune.data.benchmarks import is_multiple_choice
from zhtune.errors import UserError
from zhtune.io import atomic_write_json, atomic_write_jsonl, default_data_dir

log = logging.getLogger(__name__)

CLOZE_SUFFIX = "_cloze"


@dataclass
class EvalResult:
    summary: dict
    predictions: list[dict]
    prompts: list[dict] | None = None  # prompts.jsonl rows (eval.write_prompts)


# ----------------------------------------------------------------------------- questions

def _select_subjects(benchmarks: Sequence[str], subjects: Sequence[str] | None, data_dir) -> dict:
    """Per multiple-choice benchmark: the requested subjects it has (None: all of them).

    A subject list may mix benchmarks (``computer_network,abstract_algebra``); a benchmark with
    none of them is skipped, a name no selected benchmark has is an error."""
    from zhtune.data.benchmarks import list_subjects

    mc = [b for b in benchmarks if is_multiple_choice(b)]
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
    (a generation benchmark: first N overall), then ``max_per_benchmark`` taken round-robin over subjects."""
    from zhtune.data.benchmarks import default_split, load_benchmark

    per_benchmark = _select_subjects(eval_cfg.benchmarks, eval_cfg.subjects, data_dir)
    out: dict[str, list] = {}
    for b in eval_cfg.benchmarks:
        if not is_multiple_choice(b):
            qs = load_benchmark(b, default_split(b), data_dir=data_dir)
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
        "shots": eval_cfg.shots, "generation_shots": eval_cfg.generation_shots,
        "generation_cot": eval_cfg.generation_cot,
        "chat": eval_cfg.chat, "limit": eval_cfg.limit, "subjects": eval_cfg.subjects,
        "max_per_benchmark": eval_cfg.max_per_benchmark,
        "max_new_tokens": eval_cfg.max_new_tokens,
        # Different styles or formulations score different prompts: runs are not comparable.
        "style": eval_cfg.style, "formulation": eval_cfg.formulation,
    }


# ----------------------------------------------------------------------------- aggregation

def accuracy_stats(correct: Sequence[bool]) -> dict:
    """Accuracy, n and the binomial standard error sqrt(p(1-p)/n)."""
    n = len(correct)
    p = sum(correct) / n if n else 0.0
    return {"accuracy": p, "n": n, "stderr": math.sqrt(p * (1 - p) / n) if n else 0.0}


def mean_of_subjects(subjects: Sequence[dict]) -> dict:
    """The official C-Eval / CMMLU score: the mean of subject accuracies (a macro average), with
    the standard error of that mean, sqrt(sum of the subjects' variances) / number of subjects."""
    k = len(subjects)
    if not k:
        return {"accuracy": 0.0, "n": 0, "stderr": 0.0}
    return {"accuracy": sum(s["accuracy"] for s in subjects) / k, "n": sum(s["n"] for s in subjects),
            "stderr": math.sqrt(sum(s["stderr"] ** 2 for s in subjects)) / k}


def _group_stats(rows: list[dict], field: str = "correct", aggregation: str = "questions",
                 extra_groups: dict[str, set[str]] | None = None) -> dict:
    """Benchmark, category and subject scores of ``rows[field]``: the mean over questions, or with
    ``aggregation="subjects"`` the mean of subject accuracies at benchmark and category level.
    ``extra_groups`` (name -> subjects) are reported among the categories (CMMLU's
    "China specific", whose subjects also count in their own category)."""
    by_subject: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_subject[r["subject"]].append(r)
    subjects = {s: {**accuracy_stats([r[field] for r in v]), "category": v[0]["category"]}
                for s, v in sorted(by_subject.items())}
    groups: dict[str, list[str]] = defaultdict(list)
    for s, v in subjects.items():
        groups[v["category"]].append(s)
    for name, members in (extra_groups or {}).items():
        groups[name] = [s for s in subjects if s in members]

    def score(names: list[str]) -> dict:
        if aggregation == "subjects":
            return mean_of_subjects([subjects[s] for s in names])
        return accuracy_stats([r[field] for s in names for r in by_subject[s]])

    return {
        **score(list(subjects)), "metric": "accuracy", "aggregation": aggregation,
        "categories": {c: score(names) for c, names in sorted(groups.items()) if names},
        "subjects": subjects,
    }


def _benchmark_entry(benchmark: str, rows: list[dict], style: str, cloze: bool) -> dict:
    spec_groups, aggregation = _aggregation(benchmark, style)
    if not cloze:
        return _group_stats(rows, "correct", aggregation, spec_groups)
    entry = _group_stats(rows, "correct", aggregation, spec_groups)  # acc_norm: the headline
    raw = _group_stats(rows, "correct_unnormalized", aggregation, spec_groups)
    entry.update({"metric": "acc_norm", "accuracy_norm": entry["accuracy"],
                  "accuracy_unnormalized": raw["accuracy"], "stderr_unnormalized": raw["stderr"]})
    return entry


def _aggregation(benchmark: str, style: str) -> tuple[dict[str, set[str]], str]:
    from zhtune.data.specs import load_spec

    spec = load_spec(benchmark)
    groups = {g: {s for s, info in spec.subjects.items() if g in info.groups} for g in spec.extra_groups}
    return groups, spec.style(style).aggregation


def _category(q, style: str) -> str:
    from zhtune.data.specs import load_spec

    spec = load_spec(q.benchmark)
    return spec.category(q.subject, style) if q.subject in spec.subjects else q.category


def _base_row(q, style: str = "lm-eval", benchmark: str | None = None) -> dict:
    """The identifying fields; ``benchmark`` renames the benchmark (cloze rows: ``ceval_cloze``)
    and with it the key, so that both formulations of a question pair separately."""
    name = benchmark or q.benchmark
    key = q.key if name == q.benchmark else f"{name}{q.key[len(q.benchmark):]}"
    return {"key": key, "benchmark": name, "subject": q.subject, "category": _category(q, style),
            "split": q.split, "id": q.id}


def _choice_rows(preds, style: str = "lm-eval") -> list[dict]:
    return [{**_base_row(p.question, style), "gold": p.question.answer, "pred": p.pred,
             "probs": {k: round(v, 6) for k, v in p.probs.items()}, "correct": p.correct}
            for p in preds]


def _cloze_rows(preds, style: str) -> list[dict]:
    from zhtune.data.benchmarks import LETTERS

    return [{**_base_row(p.question, style, p.question.benchmark + CLOZE_SUFFIX),
             "formulation": "cloze", "gold": p.question.answer, "pred": p.pred_norm,
             "pred_unnormalized": p.pred,
             "loglikelihoods": {k: round(v, 6) for k, v in zip(LETTERS, p.loglikelihoods)},
             "lengths": dict(zip(LETTERS, p.lengths)),
             "correct": p.correct_norm, "correct_unnormalized": p.correct} for p in preds]


def _generation_rows(preds) -> list[dict]:
    return [{**_base_row(p.question), "gold": p.gold, "pred": p.extracted_flexible,
             "generation": p.generation, "extracted_strict": p.extracted_strict,
             "extracted_flexible": p.extracted_flexible, "correct_strict": p.correct_strict,
             "correct": p.correct} for p in preds]


# ----------------------------------------------------------------------------- evaluation

def _perplexity(model, tokenizer, eval_cfg: EvalConfig, data_dir) -> dict:
    """Bits per character per probe: ``zh``, ``en`` (seed tasks) and, with ``eval.control_probes``,
    ``zh_control``, ``en_control`` (exam question text), each entry the same shape."""
    from zhtune.eval.distributed import shared_bits_per_char
    from zhtune.eval.perplexity import CONTROL_SUFFIX, control_texts, probe_description, probe_texts

    if data_dir is None:
        reason = "no local data folder (the probe texts are read from belle/ and alpaca/)"
        log.warning("perplexity skipped: %s", reason)
        return {"skipped": reason}
    probes = {lang: probe_texts(lang, data_dir, eval_cfg.perplexity_chars) for lang in ("zh", "en")}
    if eval_cfg.control_probes:
        probes.update({lang + CONTROL_SUFFIX: control_texts(lang, data_dir, eval_cfg.perplexity_chars)
                       for lang in ("zh", "en")})
    out = {}
    for probe, texts in probes.items():
        r = shared_bits_per_char(model, tokenizer, texts, batch_size=eval_cfg.batch_size)  # by text under a launch
        out[probe] = {"bits_per_char": r.bits_per_char, "chars": r.chars, "tokens": r.tokens,
                      "texts": [[c, round(bits, 4)] for c, bits in r.per_text], **probe_description(probe)}
    return out


def _prompt_records(model, tokenizer, family, b: str, qs: list, eval_cfg: EvalConfig, data_dir,
                    formulation: str) -> list[dict]:
    """One ``prompts.jsonl`` line per question: the exact context and the scored continuations
    (generation benchmarks: the stop strings), built by the same functions the scoring uses."""
    if not is_multiple_choice(b):
        from zhtune.eval.generation import generation_prompts, generation_stops

        texts = generation_prompts(tokenizer, family, qs, shots=eval_cfg.generation_shots,
                                   cot=eval_cfg.generation_cot, data_dir=data_dir, chat=eval_cfg.chat,
                                   style=eval_cfg.style)
        until = generation_stops(b, tokenizer, family, eval_cfg.chat)
        return [{**_base_row(q, eval_cfg.style), "formulation": "generate", "context": t,
                 "until": until} for q, t in zip(qs, texts)]
    from zhtune.data.prompts import continuations
    from zhtune.eval.choice import _subject_prompts

    by_subject: dict[str, list] = defaultdict(list)
    for q in qs:
        by_subject[q.subject].append(q)
    name = b + CLOZE_SUFFIX if formulation == "cloze" else b
    out = []
    for subject, group in by_subject.items():
        _, texts = _subject_prompts(tokenizer, family, b, subject, group, eval_cfg.shots, data_dir,
                                    eval_cfg.chat, eval_cfg.style, formulation)
        out += [{**_base_row(q, eval_cfg.style, name), "formulation": formulation, "context": t,
                 "continuations": continuations(b, q, eval_cfg.style, formulation)}
                for q, t in zip(group, texts)]
    return out


def _formulations(eval_cfg: EvalConfig) -> list[str]:
    return ["letter", "cloze"] if eval_cfg.formulation == "both" else [eval_cfg.formulation]


def evaluate_model(model, tokenizer, family, eval_cfg: EvalConfig, data_dir=None, *,
                   label: str = "base", meta: dict | None = None, progress: bool = True,
                   resume_dir: Path | None = None) -> EvalResult:
    """Every selected benchmark (+ perplexity probes) on one model as it is now. With
    ``resume_dir`` (the label's output folder) finished chunks are committed there and a rerun
    scores only the missing ones (zhtune.eval.resume)."""
    from zhtune.eval import resume
    from zhtune.eval.choice import score_choice, score_cloze
    from zhtune.eval.distributed import gather_count, gather_rows, share

    data_dir = default_data_dir(data_dir)
    questions = load_questions(eval_cfg, data_dir)
    settings = eval_settings(eval_cfg)
    keys = [q.key for b in eval_cfg.benchmarks for q in questions.get(b, [])]
    resume_fp = resume.run_fingerprint(fingerprint(settings, keys), meta or {})
    done = resume.finished(resume_dir, resume_fp) if resume_dir is not None else None
    if done is not None:
        return EvalResult(*done)
    chunks = resume.Chunks(resume_dir, resume_fp)
    rows: list[dict] = []
    prompt_rows: list[dict] = []
    benchmarks: dict[str, dict] = {}
    scored_seconds = 0.0
    style = eval_cfg.style
    scored = 0
    for b in eval_cfg.benchmarks:
        qs = questions.get(b)
        if not qs:
            continue
        log.info("[%s] %s: %d questions", label, b, len(qs))
        runs = ["generate"] if not is_multiple_choice(b) else _formulations(eval_cfg)
        for formulation in runs:
            name = b + CLOZE_SUFFIX if formulation == "cloze" else b
            if formulation == "generate":
                from zhtune.eval.generation import evaluate_generation

                def score_generation(group, bar):
                    return gather_rows(_generation_rows(evaluate_generation(
                        model, tokenizer, family, share(group), shots=eval_cfg.generation_shots,
                        cot=eval_cfg.generation_cot, data_dir=data_dir, batch_size=eval_cfg.batch_size,
                        max_new_tokens=eval_cfg.max_new_tokens, chat=eval_cfg.chat, style=style,
                        progress=bar))), {}

                b_rows, seconds, _ = chunks.score(name, qs, score_generation, generate=True, progress=progress)
                flexible = accuracy_stats([r["correct"] for r in b_rows])
                strict = accuracy_stats([r["correct_strict"] for r in b_rows])
                entry = {**flexible, "metric": "accuracy_flexible", "accuracy_strict": strict["accuracy"],
                         "accuracy_flexible": flexible["accuracy"], "stderr_strict": strict["stderr"]}
            else:
                cloze = formulation == "cloze"

                def score_mc(group, bar, cloze=cloze):
                    # under a distributed launch each process scores its share (eval.distributed)
                    preds = (score_cloze if cloze else score_choice)(
                        model, tokenizer, share(group), shots=eval_cfg.shots, data_dir=data_dir,
                        batch_tokens=eval_cfg.batch_tokens, chat=eval_cfg.chat, family=family,
                        progress=bar, style=style)
                    return (gather_rows(_cloze_rows(preds, style) if cloze else _choice_rows(preds, style)),
                            {"cache_fallbacks": gather_count(sum(not p.used_cache for p in preds))})

                b_rows, seconds, counters = chunks.score(name, qs, score_mc, generate=False,
                                                         progress=progress)
                entry = _benchmark_entry(b, b_rows, style, cloze)
                entry["cache_fallbacks"] = counters.get("cache_fallbacks", 0)
            entry["formulation"] = formulation
            entry["seconds"] = round(seconds, 3)
            entry["questions_per_second"] = round(len(qs) / seconds, 3) if seconds else None
            scored_seconds += seconds
            scored += len(qs)
            benchmarks[name] = entry
            rows.extend(b_rows)
            if eval_cfg.write_prompts:
                prompt_rows += _prompt_records(model, tokenizer, family, b, qs, eval_cfg, data_dir,
                                               formulation)

    perplexity, perplexity_seconds = chunks.once(
        "perplexity", lambda: _perplexity(model, tokenizer, eval_cfg, data_dir)) if eval_cfg.perplexity else (None, 0.0)

    summary: dict[str, Any] = {
        "model": getattr(getattr(model, "config", None), "_name_or_path", None), "adapter": None,
        "adapter_scale": None, "family": getattr(family, "name", family), "label": label,
        **(meta or {}),
        "style": style,
        "settings": settings,
        "settings_fingerprint": fingerprint(settings, keys),
        "resume_fingerprint": resume_fp,  # zhtune.eval.resume: a rerun with it reuses this folder
        "benchmarks": benchmarks,
        "perplexity": perplexity,
        "throughput": {"questions": scored, "seconds": round(scored_seconds, 3),
                       "questions_per_second": round(scored / scored_seconds, 3) if scored_seconds else None,
                       "perplexity_seconds": round(perplexity_seconds, 3)},
        "created": utc_timestamp(),
        "zhtune_version": __version__,
        "provenance": provenance(),
    }
    return EvalResult(summary=summary, predictions=rows,
                      prompts=prompt_rows if eval_cfg.write_prompts else None)


def write_eval_output(result: EvalResult, out_dir) -> Path:
    """predictions.jsonl (and prompts.jsonl), then summary.json: a folder with summary.json is
    complete."""
    out = Path(out_dir)
    atomic_write_jsonl(out / "predictions.jsonl", result.predictions)
    if result.prompts is not None:
        atomic_write_jsonl(out / "prompts.jsonl", result.prompts)
    atomic_write_json(out / "summary.json", result.summary)
    close_chunks(out)  # the committed chunks are in the finished files now
    return out


# ----------------------------------------------------------------------------- several runs

def _save_settings(model_cfg: ModelConfig, eval_cfg: EvalConfig, data_dir, out: Path) -> None:
    """config.resolved.yaml in the experiment config's shape (model / data / eval)."""
    from zhtune.config import save_resolved

    save_resolved({"model": model_cfg.model_dump(mode="json"), "data": {"data_dir": str(data_dir) if data_dir else None},
                   "eval": eval_cfg.model_dump(mode="json")}, out)


def _eval_device(model_cfg: ModelConfig):
    from zhtune.models.loading import pick_device

    return pick_device(model_cfg.device)


def check_eval_dtype(model_cfg: ModelConfig) -> None:
    """On the CPU, evaluation runs in fp32 only: a lower precision is offered where its predictions
    agree with fp32 on >= 99.5% of real questions, and on this project's CPU measurement neither bf16
    weights nor bf16 autocast with fp32 norms and head did (benchmarks/eval_dtype.py; README)."""
    import torch

    from zhtune.models.loading import pick_device, pick_dtype

    device = pick_device(model_cfg.device)
    dtype = pick_dtype(model_cfg.dtype, device)
    if device.type == "cpu" and dtype != torch.float32:
        raise UserError(
            f"--dtype {model_cfg.dtype} on the CPU: evaluation there runs in float32, because bf16 "
            "changed 16 of 208 5-shot C-Eval predictions of SmolLM2 (bf16 autocast with fp32 norms "
            "and head: 5 of 208), short of the 99.5% agreement a reported number needs. Use --dtype "
            "auto or float32 (or a GPU); benchmarks/eval_dtype.py measures it for your model.")


def run_eval(model_cfg: ModelConfig, eval_cfg: EvalConfig, out_dir, *, data_dir=None,
             adapters: Sequence[str] = (), scales: Sequence[float] = (1.0,),
             include_base: bool = True, progress: bool = True,
             adapter_labels: Sequence[str] | None = None) -> dict:
    """Load the base once; evaluate it and each adapter at each scale into ``OUT/<label>/``.

    Labels: ``base``, ``<adapter>`` (scale 1) and ``<adapter>@scale-<s>``; an adapter's name is
    its ``adapter_labels`` entry, else its training folder's name. ``OUT/index.json``
    lists them (written last, with each label as it completes).

    Under a distributed launch every process scores its share of the questions
    (``eval.distributed``) and only rank 0 writes (and returns the index)."""
    from zhtune import distributed
    from zhtune.artifacts import resolve_adapter_dir
    from zhtune.eval.adapters import adapter_names, attach_adapters, scale_label, use_adapter
    from zhtune.models.loading import load_model

    if not include_base and not adapters:
        raise UserError("nothing to evaluate: no adapters and the base model excluded")
    check_eval_dtype(model_cfg)
    for a in adapters:  # before minutes of base evaluation, not after
        resolve_adapter_dir(a)
    out = Path(out_dir)
    data_dir = default_data_dir(data_dir)
    writes = distributed.is_main()
    if writes:
        out.mkdir(parents=True, exist_ok=True)
        _save_settings(model_cfg, eval_cfg.model_copy(update={"adapter_scales": list(scales)}), data_dir, out)
    distributed.init_process_group(cpu=_eval_device(model_cfg).type == "cpu")
    load_questions(eval_cfg, data_dir)  # a bad row is reported now, not after minutes of model loading
    loaded = load_model(model_cfg)
    model, tokenizer, family = loaded.model, loaded.tokenizer, loaded.family
    base_meta = {"model": model_cfg.name_or_path, "family": family.name,
                 "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
                 "device": str(next(model.parameters()).device)}
    runs: list[dict] = []
    index: dict = {}

    def record(label: str, result: EvalResult, adapter: str | None, scale: float | None):
        if not writes:
            return
        write_eval_output(result, out / label)
        runs.append({"label": label, "dir": label, "adapter": adapter, "adapter_scale": scale,
                     "settings_fingerprint": result.summary["settings_fingerprint"]})
        index.update(write_eval_index(out, model_cfg.name_or_path, runs))  # each label as it completes

    if include_base:
        result = evaluate_model(model, tokenizer, family, eval_cfg, data_dir, label="base",
                                meta=base_meta, progress=progress, resume_dir=out / "base")
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
                                            label=label, meta=meta, progress=progress,
                                            resume_dir=out / label)
                record(label, result, str(dirs[name]), float(scale))
    distributed.barrier()  # the files are written before any process moves on
    return index
