"""`zhtune prepare`: instruction records -> token ids with prompt-masked labels, packed, on disk.

Formatting. Each conversation is written in the model family's chat format (the tokenizer's own
template, the family's fallback such as ChatML, or the plain ``### Instruction:`` template for base
models without one) and cut into segments: prompt text (label -100) and assistant text (labelled).
A labelled segment is the assistant's answer plus the turn end (``<|im_end|>``, ``</s>``, ...), so
the model learns to stop; what a template writes after the turn end (ChatML's newline) belongs to
the next prompt. Every assistant turn of a multi-turn conversation is labelled. Segments are
tokenised separately, which is also how inference sees them (the prompt is encoded alone, the
answer is generated).

Truncation policy. A sample longer than ``max_length`` keeps its first ``max_length`` tokens (the
tail of the response, or later turns, is cut) when at least ``MIN_LABELLED_TOKENS`` answer tokens
remain (or the whole answer, if shorter); otherwise it is dropped as ``prompt_too_long``. Both are
counted in the manifest.

Packing (``data.packing``). Samples are packed best-fit-decreasing into rows of at most
``max_length`` tokens. ``position_ids`` restart at 0 for every sample; transformers builds a
block-diagonal causal mask from them when no ``attention_mask`` is passed and no KV cache is
used (``masking_utils.find_packed_sequence_indices``), so no token attends across samples.
Training must therefore run with ``use_cache=False`` (zhtune.train.lora sets it): with a cache the
packed-sequence detection is skipped and attention would cross samples.

The output folder holds ``train/`` and ``validation/`` (``datasets.save_to_disk``), ``manifest.json``
(written last: the folder is complete when it exists), ``data_report.json`` and the resolved config.
The manifest's tokenizer fingerprint lets ``zhtune train`` refuse data prepared for another tokenizer.
"""
from __future__ import annotations

import bisect
import hashlib
import logging
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zhtune import __version__
from zhtune.artifacts import fingerprint, utc_timestamp
from zhtune.config import ExperimentConfig, config_to_dict, save_resolved
from zhtune.data.instructions import InstructionRecord, build_instruction_set
from zhtune.errors import UserError
from zhtune.io import atomic_write_json, default_data_dir, read_json
from zhtune.models.families import (PLAIN_PROMPT, ModelFamily, ensure_chat_template, format_chat,
                                    turn_end)

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
MIN_LABELLED_TOKENS = 8
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SPLITS = ("train", "validation")
TRUNCATION_POLICY = (f"keep the first max_length tokens when at least {MIN_LABELLED_TOKENS} answer "
                     f"tokens (or the whole answer) remain; otherwise drop as prompt_too_long")


class TemplateError(UserError):
    """A chat template that cannot be split into prompt and answer segments."""


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """Hash of what decides token ids: vocabulary, added/special tokens, chat template, BOS habit."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: (kv[1], kv[0]))
    added = sorted((i, t.content, t.special) for i, t in tokenizer.added_tokens_decoder.items())
    specials = {k: str(getattr(tokenizer, k, None))
                for k in ("bos_token", "eos_token", "pad_token", "unk_token")}
    template = tokenizer.chat_template
    return fingerprint(vocab, added, specials, template if isinstance(template, (str, dict)) else None,
                       tokenizer.encode("a", add_special_tokens=True))


def _sha(text: str | None) -> str | None:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16] if text else None


@dataclass
class ChatFormatter:
    """Splits conversations into (text, labelled) segments in one model's format."""

    tokenizer: Any
    family: ModelFamily
    chat: bool = True
    turn_end: str = field(init=False)
    bos_ids: list[int] = field(init=False)

    def __post_init__(self):
        # ensure_chat_template gives template-less tokenizers the family's fallback (ChatML).
        self.chat = bool(self.chat) and ensure_chat_template(self.tokenizer, self.family)
        self.turn_end = turn_end(self.tokenizer, self.family, self.chat)
        bos = self.tokenizer.bos_token_id
        adds_bos = bos is not None and self.tokenizer.encode("a", add_special_tokens=True)[:1] == [bos]
        self.bos_ids = [bos] if adds_bos else []
        self._warned_no_end = False

    @property
    def template_name(self) -> str:
        return "chat" if self.chat else "plain"

    def segments(self, messages: list[dict]) -> list[tuple[str, bool]]:
        return self._chat_segments(messages) if self.chat else self._plain_segments(messages)

    def _chat_segments(self, messages: list[dict]) -> list[tuple[str, bool]]:
        segments: list[tuple[str, bool]] = []
        emitted = ""
        for k, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            prompt = format_chat(self.tokenizer, self.family, messages[:k], add_generation_prompt=True)
            full = format_chat(self.tokenizer, self.family, messages[:k + 1])
            if not prompt.startswith(emitted) or not full.startswith(prompt):
                raise TemplateError(
                    "the chat template does not render a conversation as a growing prefix, so the "
                    "prompt cannot be masked; use data.chat_format=false (plain template)")
            response = full[len(prompt):]
            end = response.rfind(self.turn_end) if self.turn_end else -1
            if end < 0:
                if not self._warned_no_end:
                    log.warning("the chat template does not close answers with %r; labelling the "
                                "whole rendered answer", self.turn_end)
                    self._warned_no_end = True
                answer = response
            else:
                answer = response[:end + len(self.turn_end)]
            segments += [(prompt[len(emitted):], False), (answer, True)]
            emitted = prompt + answer
        return segments

    def _plain_segments(self, messages: list[dict]) -> list[tuple[str, bool]]:
        segments: list[tuple[str, bool]] = []
        prefix = ""
        for message in messages:
            if message["role"] == "system":
                prefix = message["content"] + "\n\n"
            elif message["role"] == "user":
                segments.append((prefix + PLAIN_PROMPT.format(instruction=message["content"]), False))
            else:
                segments.append((message["content"] + self.turn_end, True))
                prefix = "\n\n"
        return segments

    def encode(self, messages: list[dict]) -> tuple[list[int], list[int]]:
        """Token ids and labels (-100 on prompt tokens) of one conversation."""
        return self.encode_many([messages])[0]

    def encode_many(self, conversations: list[list[dict]]) -> list[tuple[list[int], list[int]]]:
        all_segments = [self.segments(m) for m in conversations]
        texts = [text for segs in all_segments for text, _ in segs]
        token_lists = self.tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
        out, i = [], 0
        bos_text = self.tokenizer.bos_token
        for segs in all_segments:
            starts_with_bos = bool(bos_text) and bool(segs) and segs[0][0].startswith(bos_text)
            ids = [] if starts_with_bos else list(self.bos_ids)
            labels = [IGNORE_INDEX] * len(ids)
            for _, labelled in segs:
                toks = token_lists[i]
                i += 1
                ids += toks
                labels += toks if labelled else [IGNORE_INDEX] * len(toks)
            out.append((ids, labels))
        return out


def fit_to_length(ids: list[int], labels: list[int], max_length: int):
    """Apply the truncation policy: (ids, labels, status) with status ok|truncated|prompt_too_long."""
    labelled = sum(1 for x in labels if x != IGNORE_INDEX)
    if labelled == 0:
        return ids, labels, "no_labels"
    if len(ids) <= max_length:
        return ids, labels, "ok"
    kept = sum(1 for x in labels[:max_length] if x != IGNORE_INDEX)
    if kept < min(MIN_LABELLED_TOKENS, labelled):
        return ids, labels, "prompt_too_long"
    return ids[:max_length], labels[:max_length], "truncated"


def pack_lengths(lengths: list[int], max_length: int) -> list[list[int]]:
    """Best-fit decreasing: groups of sample indices whose lengths sum to at most ``max_length``."""
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, bin index), sorted
    for i in sorted(range(len(lengths)), key=lambda j: (-lengths[j], j)):
        n = lengths[i]
        if n > max_length:
            raise ValueError(f"sample {i} has {n} tokens, more than max_length={max_length}")
        pos = bisect.bisect_left(free, (n, -1))
        if pos < len(free):
            room, b = free.pop(pos)
            bins[b].append(i)
            bisect.insort(free, (room - n, b))
        else:
            bins.append([i])
            bisect.insort(free, (max_length - n, len(bins) - 1))
    return bins


def build_rows(samples: list[tuple[list[int], list[int]]], max_length: int, packing: bool,
               seed: int) -> dict[str, list]:
    """Rows for the dataset: one sample per row, or several packed, with restarting position ids."""
    if packing:
        groups = pack_lengths([len(ids) for ids, _ in samples], max_length)
        random.Random(f"{seed}-pack").shuffle(groups)
    else:
        groups = [[i] for i in range(len(samples))]
    rows: dict[str, list] = {"input_ids": [], "labels": [], "position_ids": []}
    for group in groups:
        ids, labels, positions = [], [], []
        for i in group:
            s_ids, s_labels = samples[i]
            ids += s_ids
            # The first token of a sample is never a target: it must not be predicted from the
            # previous sample's last token.
            labels += [IGNORE_INDEX] + s_labels[1:]
            positions += list(range(len(s_ids)))
        rows["input_ids"].append(ids)
        rows["labels"].append(labels)
        rows["position_ids"].append(positions)
    return rows


def encode_records(records: list[InstructionRecord], formatter: ChatFormatter, max_length: int,
                   progress=None, chunk: int = 512) -> tuple[list, dict]:
    """Encode and truncate records; returns (samples, counts)."""
    samples, counts = [], {"in": len(records), "truncated": 0, "prompt_too_long": 0, "no_labels": 0}
    task = progress.add_task("tokenising", total=len(records)) if progress else None
    for start in range(0, len(records), chunk):
        batch = records[start:start + chunk]
        for ids, labels in formatter.encode_many([r.messages for r in batch]):
            ids, labels, status = fit_to_length(ids, labels, max_length)
            if status in ("prompt_too_long", "no_labels"):
                counts[status] += 1
                continue
            counts["truncated"] += status == "truncated"
            samples.append((ids, labels))
        if progress:
            progress.advance(task, len(batch))
    counts["out"] = len(samples)
    return samples, counts


def prepare_settings_fingerprint(cfg: ExperimentConfig, tok_fp: str, family: ModelFamily,
                                 data_dir: Path | None) -> str:
    return fingerprint("prepare", FORMAT_VERSION, config_to_dict(cfg.data), tok_fp, family.name,
                       str(data_dir))


def _is_complete(out_dir: Path) -> dict | None:
    try:
        manifest = read_json(out_dir / MANIFEST)
    except (OSError, ValueError):
        return None
    if all((out_dir / s / "dataset_info.json").exists() for s in SPLITS):
        return manifest
    return None


def _save_split(rows: dict[str, list], path: Path) -> None:
    import datasets

    features = datasets.Features({k: datasets.Sequence(datasets.Value("int32")) for k in rows})
    tmp = path.with_name(f".{path.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    quiet = datasets.utils.are_progress_bars_disabled()
    datasets.utils.disable_progress_bars()  # our own progress bar covers this stage
    try:
        datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(tmp))
    finally:
        if not quiet:
            datasets.utils.enable_progress_bars()
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)


def prepare_dataset(cfg: ExperimentConfig, out_dir: str | Path, *, data_dir: str | Path | None = None,
                    tokenizer: Any = None, family: ModelFamily | None = None,
                    show_progress: bool = True) -> dict:
    """Build (or reuse, when the settings match) a prepared dataset folder; returns its manifest."""
    from rich.console import Console
    from rich.progress import Progress

    from zhtune.models.loading import load_tokenizer_and_family

    out_dir = Path(out_dir)
    data_dir = default_data_dir(data_dir or cfg.data.data_dir)
    if tokenizer is None or family is None:
        tokenizer, family, _ = load_tokenizer_and_family(cfg.model)
    tok_fp = tokenizer_fingerprint(tokenizer)  # before the formatter adds a fallback template
    settings_fp = prepare_settings_fingerprint(cfg, tok_fp, family, data_dir)
    existing = _is_complete(out_dir)
    if existing and existing.get("settings_fingerprint") == settings_fp:
        log.info("prepared data in %s is up to date", out_dir)
        return existing
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MANIFEST).unlink(missing_ok=True)  # the folder is incomplete until it is rewritten
    t0 = time.time()

    dcfg = cfg.data
    iset = build_instruction_set(dcfg, data_dir)
    formatter = ChatFormatter(tokenizer, family, dcfg.chat_format)
    stats: dict[str, dict] = {}
    tokens, label_tokens, n_rows = {}, {}, {}
    with Progress(console=Console(stderr=True), disable=not show_progress, transient=True) as progress:
        for split, records in (("train", iset.train), ("validation", iset.validation)):
            samples, stats[split] = encode_records(records, formatter, dcfg.max_length, progress)
            rows = build_rows(samples, dcfg.max_length, dcfg.packing, dcfg.seed)
            _save_split(rows, out_dir / split)
            tokens[split] = sum(len(r) for r in rows["input_ids"])
            label_tokens[split] = sum(sum(1 for x in r if x != IGNORE_INDEX) for r in rows["labels"])
            n_rows[split] = len(rows["input_ids"])
    for split in SPLITS:  # the tokenisation steps join the reading / cleaning counts
        for key in ("prompt_too_long", "no_labels", "truncated"):
            iset.report.counts[f"{split}_{key}"] = stats[split][key]
        for reason in ("prompt_too_long", "no_labels"):
            if stats[split][reason]:
                iset.report.warn(f"{split}: {stats[split][reason]} samples dropped ({reason}, "
                                 f"max_length={dcfg.max_length})")

    template = tokenizer.chat_template if formatter.chat else None
    manifest = {
        "format_version": FORMAT_VERSION,
        "settings_fingerprint": settings_fp,
        "tokenizer_fingerprint": tok_fp,
        "model": cfg.model.name_or_path,
        "family": family.name,
        "template": formatter.template_name,
        "chat_template_sha": _sha(template if isinstance(template, str) else None),
        "turn_end": formatter.turn_end,
        "max_length": dcfg.max_length,
        "packing": dcfg.packing,
        "seed": dcfg.seed,
        "truncation": TRUNCATION_POLICY,
        "counts": {
            "records_in": {s: stats[s]["in"] for s in SPLITS},
            "dropped": {s: {"prompt_too_long": stats[s]["prompt_too_long"],
                            "no_labels": stats[s]["no_labels"]} for s in SPLITS},
            "truncated": {s: stats[s]["truncated"] for s in SPLITS},
            "samples_out": {s: stats[s]["out"] for s in SPLITS},
            "rows": n_rows,
            "tokens": tokens,
            "label_tokens": label_tokens,
            # Share of pad tokens if every row were padded to max_length (the collator pads to the
            # longest row of a batch, so training pads less than this).
            "padding_fraction": {s: round(1 - tokens[s] / (n_rows[s] * dcfg.max_length), 4)
                                 if n_rows[s] else 0.0 for s in SPLITS},
        },
        "data_report": iset.report.to_dict(),
        "seconds": round(time.time() - t0, 2),
        "created": utc_timestamp(),
        "zhtune_version": __version__,
    }
    atomic_write_json(out_dir / "data_report.json", iset.report.to_dict())
    save_resolved(cfg, out_dir)
    atomic_write_json(out_dir / MANIFEST, manifest)
    log.info("prepared %d train rows (%d samples, %d tokens) and %d validation rows in %s",
             n_rows["train"], stats["train"]["out"], tokens["train"], n_rows["validation"], out_dir)
    return manifest


def check_compatible(dataset_dir: str | Path, tokenizer: Any, family: ModelFamily,
                     model_name: str = "this model", tokenizer_fp: str | None = None) -> dict:
    """The manifest of a prepared folder, or a UserError if it was made for another tokenizer.

    ``tokenizer_fp``: the fingerprint taken before anything (the formatter) touched the tokenizer.
    """
    dataset_dir = Path(dataset_dir)
    manifest = _is_complete(dataset_dir)
    if manifest is None:
        raise UserError(f"{dataset_dir}: not a complete prepared dataset (no {MANIFEST} or missing "
                        f"splits); run `zhtune prepare` first")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{dataset_dir}: prepared with format {manifest.get('format_version')}, "
                        f"this zhtune reads format {FORMAT_VERSION}; prepare it again")
    tok_fp = tokenizer_fp or tokenizer_fingerprint(tokenizer)
    if manifest["tokenizer_fingerprint"] != tok_fp or manifest["family"] != family.name:
        raise UserError(
            f"{dataset_dir} was prepared for {manifest['model']} (family {manifest['family']}, "
            f"tokenizer {manifest['tokenizer_fingerprint']}), but {model_name} has family "
            f"{family.name} and tokenizer {tok_fp}. Token ids and chat formats do not carry over "
            f"between tokenizers (keep Qwen and Llama data apart): run `zhtune prepare` for this "
            f"model, or `zhtune train` without --dataset to prepare on the fly")
    return manifest


def load_prepared(dataset_dir: str | Path):
    """(train, validation or None) ``datasets.Dataset`` objects of a prepared folder."""
    import datasets

    dataset_dir = Path(dataset_dir)
    rows = read_json(dataset_dir / MANIFEST)["counts"]["rows"]
    if not rows["train"]:
        raise UserError(f"{dataset_dir}: the training split is empty (see data_report.json)")
    train = datasets.load_from_disk(str(dataset_dir / "train"))
    # datasets cannot load an empty saved split back, hence the manifest's row count.
    val = datasets.load_from_disk(str(dataset_dir / "validation")) if rows["validation"] else None
    return train, val
