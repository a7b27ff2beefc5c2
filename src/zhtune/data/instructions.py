"""Instruction data: BELLE / Alpaca / multi-turn files and hub sets -> one record type.

Every training example becomes an :class:`InstructionRecord` whose ``messages`` are chat turns
(``system`` / ``user`` / ``assistant``). Readers never drop a record silently: a record that cannot be
used is counted in the :class:`DataReport` with its file and 1-based line (hub sets: row), and the
first few are kept as examples. The cleaning steps after reading (empty outputs, exact duplicates,
seeded sampling, held-out split, English replay) each leave a count in the same report.

Shapes understood (one per record, detected from its keys):

* Alpaca / BELLE: ``{"instruction", "input", "output"}`` (+ optional ``system``, ``history`` as
  ``[[user, assistant], ...]``). BELLE's multi-turn ``instruction`` ("Human: ...\\nAssistant: ...")
  is split into turns.
* ShareGPT / BELLE multi-turn: ``{"conversations": [{"from": "human", "value": ...}, ...]}``
  (``from``/``value`` or ``role``/``content``).
* OpenAI-style: ``{"messages": [{"role": "user", "content": ...}, ...]}``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import random
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from zhtune.errors import UserError
from zhtune.io import default_data_dir, is_hub_id

log = logging.getLogger(__name__)

MAX_EXAMPLES = 20  # bad records kept verbatim in the report (all of them are counted)
FILE_SUFFIXES = (".json", ".jsonl")
_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
          "bot": "assistant", "chatgpt": "assistant", "model": "assistant", "system": "system"}
_BELLE_TURN = re.compile(r"(?:^|\n)(Human|Assistant):")


@dataclass(frozen=True)
class InstructionRecord:
    id: str  # "<source>:<line>" (hub sets: "<id>:<row>"), stable across runs
    source: str
    messages: list[dict]  # [{"role": "system"|"user"|"assistant", "content": str}, ...]


@dataclass
class DataReport:
    """What happened to every record: per-source counts, bad records, and each filtering step."""

    sources: list[dict] = field(default_factory=list)  # {"source", "path", "records", "bad"}
    bad: Counter = field(default_factory=Counter)  # reason -> count
    bad_examples: list[dict] = field(default_factory=list)  # {"file", "line", "reason"}
    counts: dict[str, int] = field(default_factory=dict)  # step -> records removed / kept
    warnings: list[str] = field(default_factory=list)

    def add_bad(self, file: str, line: int, reason: str) -> None:
        self.bad[reason] += 1
        if len(self.bad_examples) < MAX_EXAMPLES:
            self.bad_examples.append({"file": file, "line": line, "reason": reason})

    def warn(self, message: str) -> None:
        log.warning(message)
        self.warnings.append(message)

    def merge(self, other: "DataReport", prefix: str = "") -> None:
        self.sources += [dict(s, role=prefix) if prefix else s for s in other.sources]
        self.bad.update(other.bad)
        room = MAX_EXAMPLES - len(self.bad_examples)
        self.bad_examples += other.bad_examples[:max(room, 0)]
        self.warnings += other.warnings

    def to_dict(self) -> dict:
        return {"sources": self.sources, "bad_records": sum(self.bad.values()),
                "bad_by_reason": dict(self.bad), "bad_examples": self.bad_examples,
                "counts": dict(self.counts), "warnings": self.warnings}


class BadRecord(ValueError):
    """A record that cannot be turned into messages; the message is the reason."""


# ---------------------------------------------------------------------------------------------
# One record -> messages


def _text(obj: dict, key: str, required: bool = True) -> str:
    value = obj.get(key)
    if value is None:
        if required:
            raise BadRecord(f"missing '{key}'")
        return ""
    if not isinstance(value, str):
        raise BadRecord(f"'{key}' is not a string (got {type(value).__name__})")
    return value


def _split_belle_dialogue(text: str) -> list[dict] | None:
    """BELLE multiturn_chat: 'Human: q1\\nAssistant: a1\\nHuman: q2\\nAssistant:' -> turns."""
    stripped = text.strip()
    if not (stripped.startswith("Human:") and stripped.endswith("Assistant:")):
        return None
    parts = _BELLE_TURN.split(stripped)  # ["", "Human", " q1", "Assistant", " a1", ...]
    turns = []
    for speaker, content in zip(parts[1::2], parts[2::2]):
        turns.append({"role": "user" if speaker == "Human" else "assistant",
                      "content": content.strip()})
    return turns[:-1]  # the trailing empty "Assistant:" is where the output goes


def _from_alpaca(obj: dict) -> list[dict]:
    instruction = _text(obj, "instruction")
    input_text = _text(obj, "input", required=False)
    output = _text(obj, "output")
    system = _text(obj, "system", required=False)
    if not instruction.strip():
        raise BadRecord("empty instruction")
    messages = [{"role": "system", "content": system}] if system.strip() else []
    for pair in obj.get("history") or []:
        if (not isinstance(pair, (list, tuple)) or len(pair) != 2
                or not all(isinstance(x, str) for x in pair)):
            raise BadRecord("'history' must be a list of [user, assistant] string pairs")
        messages += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    dialogue = _split_belle_dialogue(instruction) if not input_text else None
    if dialogue:
        messages += dialogue
    else:
        user = instruction if not input_text.strip() else f"{instruction}\n\n{input_text}"
        messages.append({"role": "user", "content": user})
    messages.append({"role": "assistant", "content": output})
    return messages


def _from_turns(turns: Any, key: str) -> list[dict]:
    if not isinstance(turns, list) or not turns:
        raise BadRecord(f"'{key}' must be a non-empty list of turns")
    messages = []
    for i, turn in enumerate(turns, 1):
        if not isinstance(turn, dict):
            raise BadRecord(f"'{key}' turn {i} is not an object")
        speaker = turn.get("from", turn.get("role"))
        content = turn.get("value", turn.get("content"))
        if not isinstance(speaker, str) or speaker.lower() not in _ROLES:
            raise BadRecord(f"'{key}' turn {i}: unknown speaker {speaker!r}")
        if not isinstance(content, str):
            raise BadRecord(f"'{key}' turn {i}: text is not a string (got {type(content).__name__})")
        messages.append({"role": _ROLES[speaker.lower()], "content": content})
    return messages


def _check_turns(messages: list[dict]) -> list[dict]:
    body = messages[1:] if messages[0]["role"] == "system" else messages
    if any(m["role"] == "system" for m in body):
        raise BadRecord("a system message after the first turn")
    if not body or body[0]["role"] != "user":
        raise BadRecord("the conversation does not start with a user turn")
    for prev, cur in zip(body, body[1:]):
        if prev["role"] == cur["role"]:
            raise BadRecord(f"two {cur['role']} turns in a row")
    if body[-1]["role"] != "assistant":
        raise BadRecord("the conversation does not end with an assistant turn")
    if not any(m["content"].strip() for m in body if m["role"] == "user"):
        raise BadRecord("empty instruction")
    return messages


def record_to_messages(obj: Any) -> list[dict]:
    """Turn one raw record into chat messages; raises :class:`BadRecord` with the reason."""
    if not isinstance(obj, dict):
        raise BadRecord(f"not a JSON object (got {type(obj).__name__})")
    if "conversations" in obj:
        messages = _from_turns(obj["conversations"], "conversations")
    elif "messages" in obj:
        messages = _from_turns(obj["messages"], "messages")
    elif "instruction" in obj or "output" in obj:
        messages = _from_alpaca(obj)
    else:
        raise BadRecord(f"unknown record shape (keys: {', '.join(sorted(obj)) or 'none'})")
    return _check_turns(messages)


# ---------------------------------------------------------------------------------------------
# Files and hub sets


def _iter_json_array(text: str, name: str) -> Iterator[tuple[int, Any]]:
    """Yield (1-based line, element) for a JSON array; a syntax error is fatal (no way to resync)."""
    decoder = json.JSONDecoder()
    pos = text.index("[") + 1
    line, counted = 1, 0
    ws = re.compile(r"\s*")
    while True:
        pos = ws.match(text, pos).end()
        if pos < len(text) and text[pos] == "]":
            return
        line += text.count("\n", counted, pos)
        counted = pos
        try:
            obj, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as err:
            raise UserError(f"{name}: line {err.lineno}: not valid JSON ({err.msg}); "
                            f"the file is a JSON array, so nothing after this point can be read"
                            ) from None
        yield line, obj
        pos = ws.match(text, pos).end()
        if pos < len(text) and text[pos] == ",":
            pos += 1
        elif pos >= len(text) or text[pos] != "]":
            lineno = text.count("\n", 0, pos) + 1
            raise UserError(f"{name}: line {lineno}: expected ',' or ']' in the JSON array")


def _iter_json_lines(text: str, name: str, report: DataReport) -> Iterator[tuple[int, Any]]:
    for lineno, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            yield lineno, json.loads(raw)
        except json.JSONDecodeError as err:
            report.add_bad(name, lineno, f"invalid JSON ({err.msg})")


def read_instruction_file(path: Path, name: str, report: DataReport) -> list[InstructionRecord]:
    """Read a JSON array or JSON-lines file of records; bad records go to ``report``."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise UserError(f"{name}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except OSError as err:
        raise UserError(f"{name}: cannot be read ({err.strerror})") from None
    head = text.lstrip()[:1]
    if not head:
        raise UserError(f"{name}: the file is empty")
    bad_before = sum(report.bad.values())
    if head == "[" and path.suffix != ".jsonl":
        rows = _iter_json_array(text, name)
    elif head == "{":
        rows = _iter_json_lines(text, name, report)
    else:
        raise UserError(f"{name}: line 1: neither a JSON array nor JSON lines of objects")
    records = []
    for line, obj in rows:
        try:
            messages = record_to_messages(obj)
        except BadRecord as err:
            report.add_bad(name, line, str(err))
            continue
        records.append(InstructionRecord(id=f"{name}:{line}", source=name, messages=messages))
    bad = sum(report.bad.values()) - bad_before
    if not records:
        first = next((e for e in reversed(report.bad_examples) if e["file"] == name), None)
        where = f"; first problem: line {first['line']}: {first['reason']}" if first else ""
        raise UserError(f"{name}: no usable instruction record ({bad} bad){where}")
    report.sources.append({"source": name, "path": str(path), "records": len(records), "bad": bad})
    return records


def read_hub_dataset(hub_id: str, report: DataReport, split: str = "train") -> list[InstructionRecord]:
    """A hub instruction set (e.g. ``BelleGroup/train_0.5M_CN``) through ``datasets.load_dataset``."""
    import datasets

    try:
        ds = datasets.load_dataset(hub_id, split=split)
    except Exception as err:  # network, missing repo, bad files: one clear message
        raise UserError(f"{hub_id}: could not load the hub dataset ({type(err).__name__}: {err})"
                        ) from None
    records, bad = [], 0
    for row, obj in enumerate(ds, 1):
        try:
            messages = record_to_messages(obj)
        except BadRecord as err:
            report.add_bad(hub_id, row, str(err))
            bad += 1
            continue
        records.append(InstructionRecord(id=f"{hub_id}:{row}", source=hub_id, messages=messages))
    if not records:
        raise UserError(f"{hub_id}: no usable instruction record ({bad} bad)")
    report.sources.append({"source": hub_id, "path": f"hub:{hub_id}", "records": len(records),
                           "bad": bad})
    return records


def _resolve_source(source: str, data_dir: Path | None) -> Path | None:
    """The local file/folder a source names, or None for a hub id."""
    candidates = [Path(source).expanduser()]
    if data_dir is not None and not Path(source).is_absolute():
        candidates.insert(0, data_dir / source)
    for candidate in candidates:
        if candidate.exists():
            return candidate
    if source.startswith("hub:"):
        return None
    if is_hub_id(source) and not source.lower().endswith(FILE_SUFFIXES + (".csv", ".parquet")):
        return None
    looked = ", ".join(str(c) for c in candidates)
    raise UserError(f"instruction source {source!r} not found (looked at {looked}); "
                    f"pass --data-dir or set ZHTUNE_DATA_DIR")


def load_instructions(sources: list[str], data_dir: str | Path | None = None
                      ) -> tuple[list[InstructionRecord], DataReport]:
    """Read every source (file, folder of .json/.jsonl files, or hub id) into records."""
    data_dir = default_data_dir(data_dir)
    report = DataReport()
    records: list[InstructionRecord] = []
    if not sources:
        raise UserError("no instruction sources given (data.train is empty)")
    for source in sources:
        path = _resolve_source(source, data_dir)
        if path is None:
            records += read_hub_dataset(source.removeprefix("hub:"), report)
            continue
        files = sorted(p for p in path.rglob("*") if p.suffix in FILE_SUFFIXES) if path.is_dir() else [path]
        if not files:
            raise UserError(f"{path}: folder holds no .json or .jsonl file")
        for file in files:
            name = source if file == path else f"{source}/{file.relative_to(path)}"
            records += read_instruction_file(file, name, report)
    report.counts["read"] = len(records)
    if report.bad:
        report.warn(f"{sum(report.bad.values())} bad instruction records skipped: "
                    + ", ".join(f"{n} {r}" for r, n in report.bad.most_common()))
    return records, report


# ---------------------------------------------------------------------------------------------
# Cleaning, sampling, held-out split, English replay


def _normalise(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).split())


def record_key(record: InstructionRecord) -> str:
    """Hash of the normalised conversation (NFKC, whitespace collapsed): exact-duplicate detection."""
    blob = json.dumps([[m["role"], _normalise(m["content"])] for m in record.messages],
                      ensure_ascii=False)
    return hashlib.sha1(blob.encode("utf-8")).hexdigest()


def drop_empty_outputs(records: list[InstructionRecord]) -> tuple[list[InstructionRecord], int]:
    kept = [r for r in records
            if all(m["content"].strip() for m in r.messages if m["role"] == "assistant")]
    return kept, len(records) - len(kept)


def drop_duplicates(records: list[InstructionRecord], seen: set[str] | None = None
                    ) -> tuple[list[InstructionRecord], int]:
    """Keep the first of each normalised conversation (and none already in ``seen``)."""
    seen = set() if seen is None else seen
    kept = []
    for r in records:
        key = record_key(r)
        if key not in seen:
            seen.add(key)
            kept.append(r)
    return kept, len(records) - len(kept)


def seeded_sample(records: list, n: int, seed: int, salt: str) -> list:
    """``n`` records chosen with a seed, in their original order (same seed, same records)."""
    if n >= len(records):
        return list(records)
    chosen = sorted(random.Random(f"{seed}-{salt}").sample(range(len(records)), n))
    return [records[i] for i in chosen]


def split_validation(records: list, val_size: float, seed: int) -> tuple[list, list]:
    """A seeded held-out fraction for validation loss: (train, validation)."""
    if val_size <= 0 or len(records) < 2:
        return list(records), []
    n_val = min(max(1, round(val_size * len(records))), len(records) - 1)
    order = list(range(len(records)))
    random.Random(f"{seed}-validation").shuffle(order)
    val_idx = set(order[:n_val])
    return ([r for i, r in enumerate(records) if i not in val_idx],
            [r for i, r in enumerate(records) if i in val_idx])


def replay_count(n_main: int, ratio: float) -> int:
    """English records needed so that they are ``ratio`` of the final mix."""
    return round(ratio * n_main / (1.0 - ratio)) if ratio > 0 else 0


@dataclass
class InstructionSet:
    train: list[InstructionRecord]
    validation: list[InstructionRecord]
    report: DataReport


def build_instruction_set(data_cfg, data_dir: str | Path | None = None) -> InstructionSet:
    """Read, clean, sample, split and mix: the instruction records a run trains and validates on.

    Order: read -> drop empty outputs -> drop exact duplicates -> seeded sample (``sample_size``)
    -> held-out split (``val_size``) -> English replay mixed into the training part only.
    """
    data_dir = default_data_dir(data_dir or data_cfg.data_dir)
    records, report = load_instructions(list(data_cfg.train), data_dir)
    c = report.counts
    records, c["empty_output"] = drop_empty_outputs(records)
    seen: set[str] = set()
    records, c["duplicates"] = drop_duplicates(records, seen)
    if data_cfg.sample_size is not None:
        if data_cfg.sample_size > len(records):
            report.warn(f"data.sample_size={data_cfg.sample_size} but only {len(records)} "
                        f"usable records: using all of them")
        sampled = seeded_sample(records, data_cfg.sample_size, data_cfg.seed, "sample")
        c["not_sampled"] = len(records) - len(sampled)
        records = sampled
    train, validation = split_validation(records, data_cfg.val_size, data_cfg.seed)
    c["validation"] = len(validation)
    c["train_main"] = len(train)

    replay = data_cfg.replay
    c["replay"] = 0
    if replay.ratio > 0:
        english, en_report = load_instructions([replay.source], data_dir)
        report.merge(en_report, prefix="replay")
        english, c["replay_empty_output"] = drop_empty_outputs(english)
        english, c["replay_duplicates"] = drop_duplicates(english, seen)
        wanted = replay_count(len(train), replay.ratio)
        if wanted > len(english):
            report.warn(f"English replay: ratio {replay.ratio} needs {wanted} records but "
                        f"{replay.source} has {len(english)} usable; using all of them")
        chosen = seeded_sample(english, wanted, data_cfg.seed, "replay")
        c["replay"] = len(chosen)
        train = train + chosen
    random.Random(f"{data_cfg.seed}-mix").shuffle(train)
    c["train"] = len(train)
    c["replay_fraction_pct"] = round(100 * c["replay"] / max(len(train), 1), 2)
    return InstructionSet(train=train, validation=validation, report=report)
