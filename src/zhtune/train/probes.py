"""Forgetting probes during training: small, fixed evaluations every N optimizer steps.

A probe set is a few questions of each chosen benchmark (by default 40 C-Eval val and 40 MMLU test
questions; any benchmark with a spec can be listed, ``train.probes.benchmarks: {cmmlu: 40, ...}``),
taken round-robin over the subjects of its scored split, and a few thousand characters of held-out
Chinese and English text (the self-instruct seed tasks, see
``zhtune.eval.perplexity``). It is measured once before the first step (the baseline) and then every
``every_steps`` optimizer steps, inside the training process.

Definitions (all logged, and appended to ``probes.jsonl``):

* ``english_retention = base_en_bpc / en_bpc``: 1.0 means English text is predicted as well as
  before training, below 1 means forgetting. Bits per character on 4,000 characters is a low-noise
  measurement; MMLU accuracy on 40 questions is not (one question is 2.5 points), so it is logged
  as ``english_retention_mmlu = mmlu_acc / base_mmlu_acc`` but decisions use the perplexity ratio.
* ``chinese_gain_bits = base_zh_bpc - zh_bpc`` (bits per character gained on Chinese text) and
  ``chinese_gain_<b> = <b>_acc - base_<b>_acc`` for each Chinese benchmark (accuracy points as a
  fraction); ``english_retention_<b> = <b>_acc / base_<b>_acc`` for each English one.
* ``trade_off = (base_zh_bpc / zh_bpc - 1) + (base_en_bpc / en_bpc - 1)``: the relative improvement
  on Chinese text plus the relative change on English text, weighted equally; 0 at the baseline.
  ``keep_best`` saves the adapter whenever this score beats every earlier probe (never the baseline
  itself, which is the untrained model).

``min_english_retention``: training stops (``control.should_training_stop``) at the first probe whose
``english_retention`` falls below it; the reason is logged and written to ``probes.jsonl``.

Only the main process evaluates and writes; under a distributed launch it broadcasts its stop
decision at every probe step, so that all processes stop at the same step. With DeepSpeed ZeRO-3
the main process alone cannot run the model (its weights are sharded): probes are refused at the
start there (``check_probes_supported``).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from zhtune.data.benchmarks import Question, round_robin
from zhtune.data.specs import DEFAULT_STYLE
from zhtune.io import atomic_write_json

log = logging.getLogger(__name__)

# The default probe set's metrics (other benchmarks add probe/<name>_acc).
PROBE_KEYS = ("probe/ceval_acc", "probe/mmlu_acc", "probe/zh_bpc", "probe/en_bpc")
GENERATION_PROBE_TOKENS = 256  # generation length of a generation benchmark's probe questions


@dataclass
class ProbeSet:
    questions: dict[str, list[Question]]  # benchmark -> its probe questions (an empty list: none)
    zh_texts: list[str]
    en_texts: list[str]
    shots: int
    data_dir: str | None = None  # where few-shot examples come from when shots > 0
    style: str = DEFAULT_STYLE


def build_probe_set(data_dir, *, ceval_questions: int = 40, mmlu_questions: int = 40,
                    perplexity_chars: int = 4000, shots: int = 0,
                    questions: dict[str, int] | None = None, style: str = DEFAULT_STYLE) -> ProbeSet:
    """The fixed probe set: ``questions`` (benchmark -> how many; default C-Eval ``ceval_questions``
    and MMLU ``mmlu_questions``) taken round-robin over the subjects of each benchmark's scored
    split, and the first ``perplexity_chars`` characters of the zh / en probe texts."""
    from zhtune.data.benchmarks import default_split, load_benchmark
    from zhtune.eval.perplexity import probe_texts

    counts = questions if questions is not None else {"ceval": ceval_questions, "mmlu": mmlu_questions}
    chosen = {b: round_robin(load_benchmark(b, default_split(b), data_dir), n) if n else []
              for b, n in counts.items()}
    zh = probe_texts("zh", data_dir, perplexity_chars) if perplexity_chars else []
    en = probe_texts("en", data_dir, perplexity_chars) if perplexity_chars else []
    return ProbeSet(questions=chosen, zh_texts=zh, en_texts=en, shots=shots,
                    data_dir=str(data_dir) if data_dir is not None else None, style=style)


def _accuracy(model, tokenizer, family, benchmark: str, questions: list[Question], probes: ProbeSet,
              batch_size: int) -> float:
    from zhtune.data.benchmarks import is_multiple_choice

    if is_multiple_choice(benchmark):
        from zhtune.eval.choice import score_choice

        preds = score_choice(model, tokenizer, questions, shots=probes.shots, data_dir=probes.data_dir,
                             chat=False, family=family, progress=False,
                             style=probes.style)
    else:
        from zhtune.eval.generation import evaluate_generation

        preds = evaluate_generation(model, tokenizer, family, questions, shots=probes.shots,
                               data_dir=probes.data_dir, batch_size=batch_size,
                               max_new_tokens=GENERATION_PROBE_TOKENS, style=probes.style, progress=False)
    return sum(p.correct for p in preds) / len(preds)


def run_probes(model: Any, tokenizer: Any, family: Any, probes: ProbeSet, *,
               batch_size: int = 8) -> dict:
    """``{"probe/<benchmark>_acc" for each benchmark, "probe/zh_bpc", "probe/en_bpc"}`` for the model
    as it is now (a key is left out when its part of the probe set is empty)."""
    from zhtune.eval.perplexity import bits_per_char

    out: dict[str, float] = {}
    for name, questions in probes.questions.items():
        if questions:
            out[f"probe/{name}_acc"] = _accuracy(model, tokenizer, family, name, questions, probes,
                                                 batch_size)
    for name, texts in (("zh", probes.zh_texts), ("en", probes.en_texts)):
        if texts:
            out[f"probe/{name}_bpc"] = bits_per_char(model, tokenizer, texts,
                                                     batch_size=batch_size).bits_per_char
    return out


def derived_metrics(metrics: dict, base: dict) -> dict:
    """english_retention, chinese_gain and the trade-off score relative to the baseline probe."""
    out: dict[str, float] = {}
    zh, en = metrics.get("probe/zh_bpc"), metrics.get("probe/en_bpc")
    base_zh, base_en = base.get("probe/zh_bpc"), base.get("probe/en_bpc")
    from zhtune.data.benchmarks import CHINESE_BENCHMARKS, ENGLISH_BENCHMARKS

    if en and base_en:
        out["probe/english_retention"] = base_en / en
    for b in ENGLISH_BENCHMARKS:
        if metrics.get(f"probe/{b}_acc") is not None and base.get(f"probe/{b}_acc"):
            out[f"probe/english_retention_{b}"] = metrics[f"probe/{b}_acc"] / base[f"probe/{b}_acc"]
    if zh is not None and base_zh is not None:
        out["probe/chinese_gain_bits"] = base_zh - zh
    for b in CHINESE_BENCHMARKS:
        if metrics.get(f"probe/{b}_acc") is not None and base.get(f"probe/{b}_acc") is not None:
            out[f"probe/chinese_gain_{b}"] = metrics[f"probe/{b}_acc"] - base[f"probe/{b}_acc"]
    if zh and en and base_zh and base_en:
        out["probe/trade_off"] = (base_zh / zh - 1.0) + (base_en / en - 1.0)
    return out


class ForgettingProbeCallback(TrainerCallback):
    """Runs the probe set before training and every ``every_steps`` optimizer steps.

    Metrics go to ``trainer.log`` (so TensorBoard and ``state.log_history`` get them) when the
    callback is bound to its trainer with ``bind(trainer)``; unbound, they are appended to
    ``state.log_history`` directly. Every probe is also a line of ``out_dir/probes.jsonl``.
    """

    def __init__(self, probes: ProbeSet, tokenizer: Any, family: Any, *, every_steps: int,
                 out_dir: str | Path, keep_best: bool = False,
                 min_english_retention: float | None = None, batch_size: int = 8):
        if every_steps < 1:
            raise ValueError(f"every_steps must be >= 1, got {every_steps}")
        if (keep_best or min_english_retention is not None) and not (probes.zh_texts and probes.en_texts):
            raise ValueError("keep_best and min_english_retention need the zh and en perplexity "
                             "texts (perplexity_chars > 0)")
        self.probes = probes
        self.tokenizer = tokenizer
        self.family = family
        self.every_steps = every_steps
        self.out_dir = Path(out_dir)
        self.keep_best = keep_best
        self.min_english_retention = min_english_retention
        self.batch_size = batch_size
        self.trainer = None
        self.baseline: dict | None = None
        self.best_score: float | None = None
        self.last_step: int | None = None
        self.stop_reason: str | None = None

    @property
    def jsonl_path(self) -> Path:
        return self.out_dir / "probes.jsonl"

    @property
    def best_dir(self) -> Path:
        return self.out_dir / "best_adapter"

    def bind(self, trainer) -> "ForgettingProbeCallback":
        """Attach to ``trainer`` (adds the callback if needed) so probes go through ``trainer.log``."""
        if self not in trainer.callback_handler.callbacks:
            trainer.add_callback(self)
        self.trainer = trainer
        return self

    # ------------------------------------------------------------------ events

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if not state.is_world_process_zero:
            return
        if state.global_step > 0:
            self._restore(state.global_step)
        if self.baseline is None:
            self._probe(model, state, control, baseline=True)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every_steps != 0:
            return
        # Every process gets here at the same steps: rank 0 probes and decides whether to stop,
        # and all of them follow that decision (a process that stopped alone would leave the
        # others waiting in the next step's gradient all-reduce).
        stop = False
        if state.is_world_process_zero and state.global_step != self.last_step:
            self._probe(model, state, control, baseline=False)
            stop = bool(control.should_training_stop)
        from zhtune.distributed import broadcast_from_main

        if broadcast_from_main(stop):
            control.should_training_stop = True

    # ------------------------------------------------------------------ work

    def _probe(self, model, state, control, baseline: bool) -> dict:
        started = time.perf_counter()
        was_training = model.training
        model.eval()
        try:
            with torch.inference_mode():
                metrics = run_probes(model, self.tokenizer, self.family, self.probes,
                                     batch_size=self.batch_size)
        finally:
            model.train(was_training)
        if baseline:
            self.baseline = dict(metrics)
        metrics.update(derived_metrics(metrics, self.baseline or metrics))
        metrics["probe/seconds"] = round(time.perf_counter() - started, 3)
        row = {"step": state.global_step, "epoch": state.epoch, "baseline": baseline, **metrics}

        retention = metrics.get("probe/english_retention")
        if (not baseline and self.min_english_retention is not None and retention is not None
                and not retention >= self.min_english_retention):  # NaN (diverged) stops too
            self.stop_reason = (f"english_retention {retention:.4f} < min_english_retention "
                                f"{self.min_english_retention} at step {state.global_step} "
                                f"(en_bpc {metrics['probe/en_bpc']:.4f}, baseline "
                                f"{self.baseline['probe/en_bpc']:.4f})")
            log.warning("stopping training: %s", self.stop_reason)
            control.should_training_stop = True
            row["stop_reason"] = self.stop_reason

        score = metrics.get("probe/trade_off")
        if self.keep_best and not baseline and score is not None and (
                self.best_score is None or score > self.best_score):
            self.best_score = score
            self._save_best(model, row)
            row["saved_best"] = True
        elif baseline and score is not None:
            self.best_score = score  # the untrained model is the bar to beat

        self._append(row)
        self.last_step = state.global_step
        # trainer.log clears should_log; the Trainer's own loss log of this step must still run
        # (and under DDP it gathers the loss from every process: skipped here alone, it would
        # leave the other processes waiting).
        should_log = control.should_log
        self._log(state, {k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        control.should_log = should_log
        return row

    def _log(self, state, metrics: dict) -> None:
        if self.trainer is not None:
            self.trainer.log(dict(metrics))
        else:
            state.log_history.append({**metrics, "epoch": state.epoch, "step": state.global_step})

    def _append(self, row: dict) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.jsonl_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def _save_best(self, model, row: dict) -> None:
        """Write the adapter to a temporary folder, then swap it in for the previous best."""
        tmp = self.out_dir / f".best_adapter.tmp-{os.getpid()}"
        old = self.out_dir / f".best_adapter.old-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(tmp)
        atomic_write_json(tmp / "probe.json", row)
        if self.best_dir.exists():
            shutil.rmtree(old, ignore_errors=True)
            self.best_dir.rename(old)
        tmp.rename(self.best_dir)
        shutil.rmtree(old, ignore_errors=True)
        log.info("best trade-off so far (%.4f) at step %s: saved %s", row["probe/trade_off"],
                 row["step"], self.best_dir)

    def _restore(self, global_step: int) -> None:
        """On resume: the baseline and best score from ``probes.jsonl`` of the interrupted run."""
        if not self.jsonl_path.exists():
            log.warning("resuming at step %d without %s: the probe baseline is measured now, on the "
                        "partly trained model", global_step, self.jsonl_path)
            return
        with open(self.jsonl_path, encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
        base = next((r for r in rows if r.get("baseline")), None)
        if base is None:
            return
        self.baseline = {k: v for k, v in base.items()
                         if k.startswith("probe/") and k.endswith(("_acc", "_bpc"))}
        earlier = [r for r in rows if not r.get("baseline") and r["step"] <= global_step]
        scores = [r["probe/trade_off"] for r in earlier if r.get("saved_best")]
        self.best_score = max(scores, default=base.get("probe/trade_off"))
        self.last_step = max((r["step"] for r in earlier), default=None)


def check_probes_supported(probes_on: bool, zero_stage: int | None) -> None:
    """Probes run the model on the main process alone; under ZeRO-3 its weights are sharded across
    processes, so that forward pass would wait forever for the others. Refused before any work."""
    if probes_on and zero_stage == 3:
        from zhtune.errors import UserError

        raise UserError("train.probes is not supported with DeepSpeed ZeRO-3 (the main process "
                        "cannot run the sharded model alone); use train.deepspeed=zero2, or turn "
                        "the probes off with train.probes.every_steps=null")
