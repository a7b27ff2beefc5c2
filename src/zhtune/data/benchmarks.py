"""Benchmark questions from the official release layout or the hub, as one record type.

What each benchmark's files look like (layout, columns, splits, subjects, hub location) is its spec,
``zhtune/resources/benchmarks/<name>.yaml`` (``zhtune.data.specs``); this module reads any spec whose
files are CSV or JSON lines. Local layout (``<data_dir>/<benchmark>/``), exactly as the official releases ship it:

- C-Eval  ``{dev,val,test}/<subject>_<split>.csv``, header ``id,question,A,B,C,D,answer[,explanation]``
  (test has no ``answer`` column: its labels are not public).
- CMMLU   ``{dev,test}/<subject>.csv``, header ``,Question,A,B,C,D,Answer`` (first column: row index).
- MMLU    ``{dev,val,test}/<subject>_<split>.csv``, no header, columns ``question,A,B,C,D,answer``.
- GSM8K   ``{train,test,test_socratic}.jsonl``, one ``{"question", "answer"}`` object per line.

Without a local folder the same questions come from the hub (``ceval/ceval-exam``, ``haonan-li/cmmlu``,
``cais/mmlu``, ``openai/gsm8k``) through ``datasets.load_dataset``. Either way the result is a list of
``Question`` records in a fixed order (subject name, then file order), so keys pair across runs.

Row numbers in error messages are 1-based and count a CSV header as row 1, as a spreadsheet shows the
file; MMLU files have no header, so their first question is row 1. JSONL errors give the line number.
"""
from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Sequence

from zhtune.data.specs import BenchmarkSpec, list_specs, load_spec
from zhtune.errors import UserError
from zhtune.io import default_data_dir

log = logging.getLogger(__name__)

# Views of the specs, for the callers that only need names.
BENCHMARKS: tuple[str, ...] = list_specs()
CHINESE_BENCHMARKS = tuple(b for b in BENCHMARKS if load_spec(b).language == "zh")
ENGLISH_BENCHMARKS = tuple(b for b in BENCHMARKS if load_spec(b).language == "en")
LETTERS = ("A", "B", "C", "D")
CATEGORIES = ("STEM", "Humanities", "Social Sciences", "Other")  # GSM8K's one subject: "Math"

SPLITS = {b: tuple(load_spec(b).splits.all) for b in BENCHMARKS}
HUB_DATASETS = {b: load_spec(b).hub.repo for b in BENCHMARKS}
# Splits that are unlabeled by design (not an error when checking a data folder).
UNLABELED_SPLITS = {(b, s) for b in BENCHMARKS for s in load_spec(b).splits.unlabeled}


@dataclass(frozen=True)
class Question:
    benchmark: str  # one of BENCHMARKS
    subject: str  # file stem without split suffix, e.g. "computer_network"; "main" for GSM8K
    category: str  # "STEM" | "Humanities" | "Social Sciences" | "Other" (GSM8K: "Math")
    split: str  # "dev" | "val" | "test" | "train"
    id: str  # stable within (benchmark, subject, split)
    question: str
    choices: tuple[str, ...] = field(default_factory=tuple)  # A-D texts; empty for GSM8K
    answer: str | None = None  # "A".."D"; GSM8K: the full solution ending "#### N"; None: unlabeled

    @property
    def key(self) -> str:
        """Identifies the question across runs (used to pair base and tuned predictions)."""
        return f"{self.benchmark}/{self.subject}/{self.split}/{self.id}"


# ----------------------------------------------------------------------------- subjects


@dataclass(frozen=True)
class SubjectInfo:
    name_en: str
    name_zh: str
    category: str  # one of CATEGORIES; GSM8K: "Math"
    subcategory: str | None = None  # CMMLU / MMLU fine-grained group ("math", "law", ...)
    china_specific: bool = False  # CMMLU's "China specific" group


def _spec(benchmark: str) -> BenchmarkSpec:
    return load_spec(benchmark)  # an unknown name is a UserError listing the known ones


def _check_benchmark(benchmark: str) -> None:
    _spec(benchmark)


def is_multiple_choice(benchmark: str) -> bool:
    """Whether a benchmark (any name; unknown ones are not) is scored by choosing an option."""
    return benchmark in list_specs() and _spec(benchmark).kind == "multiple_choice"


def known_subjects(benchmark: str) -> list[str]:
    """Every subject zhtune knows for a benchmark (the hub's configs), sorted."""
    return sorted(_spec(benchmark).subjects)


def subject_info(benchmark: str, subject: str) -> SubjectInfo:
    """English and Chinese names and the category of a subject (from the benchmark's spec)."""
    row = _spec(benchmark).subjects.get(subject)
    if row is None:
        raise UserError(f"{benchmark} has no subject {subject!r} in zhtune's subject list; "
                        f"known: {', '.join(known_subjects(benchmark))}")
    return SubjectInfo(row.name_en, row.name_zh, row.category, row.subcategory,
                       "China specific" in row.groups)


def default_split(benchmark: str) -> str:
    """The split scored by default: C-Eval val (test labels are private), else test."""
    return _spec(benchmark).splits.eval


def _check_split(benchmark: str, split: str) -> None:
    splits = _spec(benchmark).splits.all
    if split not in splits:
        raise UserError(f"{benchmark} has no split {split!r}; splits: {', '.join(splits)}")


# ----------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class ParsedFile:
    """One subject file (or hub config split): its questions, where each came from, its problems."""
    source: str
    questions: tuple[Question, ...]
    rows: tuple[str, ...]  # parallel to questions: "row 7 (line 9)" / "line 3" / "record 4"
    problems: tuple[str, ...]

    def unlabeled(self) -> list[str]:
        return [f"{self.source}: {where}: no answer" for q, where in zip(self.questions, self.rows)
                if q.answer is None]


class _RowProblem(ValueError):
    pass


def _make_question(benchmark: str, subject: str, category: str, split: str, qid: str, question: Any,
                   choices: Sequence[Any], answer: Any) -> Question:
    """One validated record; raises _RowProblem saying what is wrong with the row."""
    if not isinstance(question, str) or not question.strip():
        raise _RowProblem("empty question")
    answer = "" if answer is None else str(answer).strip()
    if _spec(benchmark).kind == "generation":
        if answer and "####" not in answer:
            raise _RowProblem("answer does not end with '#### <number>'")
    else:
        if len(choices) != 4:
            raise _RowProblem(f"{len(choices)} choices, expected 4 (A-D)")
        if answer and answer not in LETTERS:
            raise _RowProblem(f"answer {answer!r} is not one of A, B, C, D")
    return Question(benchmark, subject, category, split, qid, question,
                    tuple("" if c is None else str(c) for c in choices), answer or None)


def _parse_csv(benchmark: str, subject: str, split: str, path: Path) -> ParsedFile:
    questions, rows, problems = [], [], []
    files = _spec(benchmark).files
    cols = files.columns
    has_header = files.header
    try:
        category = subject_info(benchmark, subject).category
    except UserError as err:
        return ParsedFile(str(path), (), (), (f"{path}: {err}",))
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f)
            header = None if has_header else list(cols.names or [])
            last_line = 0
            for index, record in enumerate(reader):
                first_line, last_line = last_line + 1, reader.line_num
                row_no = index + 1
                where = f"row {row_no} (line {first_line})"
                if header is None:
                    header = record
                    missing = [c for c in (cols.question, *cols.choices) if c not in header]
                    if missing:
                        problems.append(f"{path}: row 1 (header): missing column(s) {', '.join(missing)}"
                                        f" (header is {','.join(header)})")
                        break
                    continue
                if not record:  # a blank line carries no question
                    continue
                if len(record) != len(header):
                    problems.append(f"{path}: {where}: {len(record)} fields, expected {len(header)} "
                                    f"({','.join(header)}): missing or extra column")
                    continue
                cells = dict(zip(header, record))
                # No id column (MMLU): the 0-based position of the question in the file is its id.
                qid = cells.get(cols.id, "").strip() if cols.id is not None else ""
                qid = qid or str(index - 1 if has_header else index)
                try:
                    q = _make_question(benchmark, subject, category, split, qid, cells[cols.question],
                                       [cells[c] for c in cols.choices], cells.get(cols.answer))
                except _RowProblem as err:
                    problems.append(f"{path}: {where}: {err}")
                    continue
                questions.append(q)
                rows.append(where)
    except UnicodeDecodeError as err:
        problems.append(f"{path}: not UTF-8 text ({err})")
    except csv.Error as err:
        problems.append(f"{path}: line {reader.line_num}: unreadable CSV ({err})")
    if not questions and not problems:
        problems.append(f"{path}: no questions in the file")
    return ParsedFile(str(path), tuple(questions), tuple(rows), tuple(problems))


def _parse_jsonl(benchmark: str, subject: str, split: str, path: Path) -> ParsedFile:
    questions, rows, problems = [], [], []
    cols = _spec(benchmark).files.columns
    category = subject_info(benchmark, subject).category
    try:
        with open(path, encoding="utf-8-sig") as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"line {line_no}"
                try:
                    obj = json.loads(line)
                    if not isinstance(obj, dict) or cols.question not in obj:
                        raise _RowProblem(f"not an object with {cols.question!r} and {cols.answer!r}")
                    q = _make_question(benchmark, subject, category, split, str(line_no - 1),
                                       obj[cols.question], [obj[c] for c in cols.choices],
                                       obj.get(cols.answer))
                except (json.JSONDecodeError, _RowProblem) as err:
                    problems.append(f"{path}: {where}: {err}")
                    continue
                questions.append(q)
                rows.append(where)
    except UnicodeDecodeError as err:
        problems.append(f"{path}: not UTF-8 text ({err})")
    if not questions and not problems:
        problems.append(f"{path}: no questions in the file")
    return ParsedFile(str(path), tuple(questions), tuple(rows), tuple(problems))


@lru_cache(maxsize=None)
def _parse_local_cached(benchmark: str, subject: str, split: str, path: str,
                        mtime_ns: int, size: int) -> ParsedFile:
    # mtime and size are part of the key so that an edited file is read again.
    reader = {"csv": _parse_csv, "jsonl": _parse_jsonl}[_spec(benchmark).files.reader]
    return reader(benchmark, subject, split, Path(path))


def local_file(data_dir: str | Path, benchmark: str, subject: str, split: str) -> Path:
    """Where the official layout keeps one subject's split (the spec's ``files.path``)."""
    return Path(data_dir) / benchmark / _spec(benchmark).files.path.format(split=split, subject=subject)


def _read_local(data_dir: Path, benchmark: str, subject: str, split: str) -> ParsedFile:
    path = local_file(data_dir, benchmark, subject, split)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise UserError(f"{benchmark} {split} file for subject {subject!r} not found: {path}") from None
    return _parse_local_cached(benchmark, subject, split, str(path.resolve()), st.st_mtime_ns, st.st_size)


def _local_subjects(data_dir: Path, benchmark: str, split: str) -> list[str]:
    """Subjects with a file for ``split``: the file names that fit the spec's path pattern."""
    root = Path(data_dir) / benchmark
    pattern = _spec(benchmark).files.path
    if "{subject}" not in pattern:  # one file per split holds the one subject (GSM8K "main")
        return known_subjects(benchmark) if local_file(data_dir, benchmark, "", split).is_file() else []
    rel = Path(pattern.format(split=split, subject="\0"))
    prefix, _, suffix = rel.name.partition("\0")
    folder = root / rel.parent
    if not folder.is_dir():
        return []
    return sorted(p.name[len(prefix): len(p.name) - len(suffix)] for p in folder.iterdir()
                  if p.is_file() and p.name.startswith(prefix) and p.name.endswith(suffix)
                  and len(p.name) > len(prefix) + len(suffix))


# ----------------------------------------------------------------------------- hub


def hub_location(benchmark: str, subject: str, split: str) -> tuple[str, str, str]:
    """(dataset id, config, split) on the hub for one of our (benchmark, subject, split)."""
    hub = _spec(benchmark).hub
    config = hub.configs.get(split, hub.config).format(subject=subject)
    return hub.repo, config, hub.splits.get(split, split)


PARQUET_EXPORT = "refs/convert/parquet"


def hub_load(repo: str, config: str | None, split: str, revision: str | None = None):
    """``datasets.load_dataset`` with a clear error (see ``hub_load_revision``)."""
    return hub_load_revision(repo, config, split, revision)[0]


def hub_load_revision(repo: str, config: str | None, split: str, revision: str | None = None):
    """(dataset, revision read). Falls back to the parquet export for script datasets.

    Datasets that still ship a loading script cannot be read by ``datasets`` >= 4; the hub keeps an
    automatic parquet conversion of them under ``refs/convert/parquet``, which is read instead.
    """
    import datasets  # looked up at call time, so tests can replace datasets.load_dataset

    try:
        return datasets.load_dataset(repo, config, split=split, revision=revision), revision
    except RuntimeError as err:
        if "scripts are no longer supported" not in str(err) or revision == PARQUET_EXPORT:
            raise UserError(f"could not load {repo} ({config}, {split}) from the hub: {err}") from err
        log.info("%s ships a loading script; reading its parquet export instead", repo)
        return hub_load_revision(repo, config, split, PARQUET_EXPORT)
    except UserError:
        raise
    except Exception as err:  # network, missing dataset or config, auth: all the user's to fix
        raise UserError(
            f"could not load {repo} ({config}, {split}) from the hub: {type(err).__name__}: {err}. "
            f"Pass --data-dir (or set ZHTUNE_DATA_DIR) to a local copy; `zhtune data download` "
            f"makes one.") from err


def hub_record_fields(benchmark: str, row: dict, index: int) -> tuple[str, Any, list, Any]:
    """(id, question, choices, answer) of one hub row, in the local files' terms."""
    spec = _spec(benchmark)
    cols, hub = spec.files.columns, spec.hub
    qid = str(row[cols.id]) if cols.id else str(index)
    choices = list(row[hub.choices_column]) if hub.choices_column else [row[c] for c in cols.choices]
    answer = row.get(cols.answer)
    if hub.answer_index and isinstance(answer, int) and not isinstance(answer, bool):  # 0-3
        answer = LETTERS[answer] if 0 <= answer < len(LETTERS) else str(answer)
    return qid, row[cols.question], choices, answer


@lru_cache(maxsize=None)
def _read_hub(benchmark: str, subject: str, split: str) -> ParsedFile:
    repo, config, hub_split = hub_location(benchmark, subject, split)
    source = f"hub {repo} (config {config}, split {hub_split})"
    category = subject_info(benchmark, subject).category
    questions, rows, problems = [], [], []
    for index, row in enumerate(hub_load(repo, config, hub_split)):
        where = f"record {index + 1}"
        try:
            qid, text, choices, answer = hub_record_fields(benchmark, row, index)
            q = _make_question(benchmark, subject, category, split, qid, text, choices, answer)
        except (KeyError, _RowProblem) as err:
            problems.append(f"{source}: {where}: {err}")
            continue
        questions.append(q)
        rows.append(where)
    return ParsedFile(source, tuple(questions), tuple(rows), tuple(problems))


# ----------------------------------------------------------------------------- public API


def _read(root: Path | None, benchmark: str, subject: str, split: str) -> ParsedFile:
    return _read_hub(benchmark, subject, split) if root is None else _read_local(root, benchmark, subject, split)


def _benchmark_root(data_dir: str | Path | None, benchmark: str) -> Path | None:
    root = default_data_dir(data_dir)
    if root is not None and not (root / benchmark).is_dir():
        raise UserError(f"no {benchmark}/ folder in the data folder {root}; run `zhtune data download "
                        f"--output-dir {root}` or unset ZHTUNE_DATA_DIR to read the hub")
    return root


def list_subjects(benchmark: str, data_dir: str | Path | None = None) -> list[str]:
    """Subjects present locally (any split), or every hub subject when reading the hub; sorted."""
    _check_benchmark(benchmark)
    root = _benchmark_root(data_dir, benchmark)
    if root is None:
        return known_subjects(benchmark)
    return sorted({s for split in _spec(benchmark).splits.all for s in _local_subjects(root, benchmark, split)})


def _choose(benchmark: str, available: list[str], subjects: Iterable[str] | None, where: str) -> list[str]:
    if subjects is None:
        return available
    wanted = list(dict.fromkeys(subjects))
    unknown = [s for s in wanted if s not in available]
    if unknown:
        raise UserError(f"unknown {benchmark} subject(s) {', '.join(map(repr, unknown))} in {where}; "
                        f"valid: {', '.join(available)}")
    return sorted(wanted)


def _raise_problems(parsed: ParsedFile, require_answers: bool) -> None:
    problems = list(parsed.problems) + (parsed.unlabeled() if require_answers else [])
    if problems:
        more = f" (and {len(problems) - 1} more problem(s) in this file)" if len(problems) > 1 else ""
        raise UserError(problems[0] + more)


def load_benchmark(benchmark: str, split: str | None = None, data_dir: str | Path | None = None,
                   subjects: Iterable[str] | None = None, require_answers: bool = True) -> list[Question]:
    """All questions of a benchmark split, ordered by subject name, then file order.

    ``data_dir``: local folder in the official layout, else ``ZHTUNE_DATA_DIR``, else the hub.
    ``require_answers``: every question must have a gold answer (scoring); C-Eval test never has one.
    Parsed files are cached in-process, so repeated calls are cheap.
    """
    _check_benchmark(benchmark)
    split = split or default_split(benchmark)
    _check_split(benchmark, split)
    if not _spec(benchmark).labeled(split) and require_answers:
        raise UserError(_spec(benchmark).splits.unlabeled_message
                        or f"{benchmark} {split} has no answers; score another split")
    root = _benchmark_root(data_dir, benchmark)
    if root is None:
        available, where = known_subjects(benchmark), f"hub {_spec(benchmark).hub.repo}"
    else:
        available, where = _local_subjects(root, benchmark, split), str(root / benchmark)
        if not available:
            raise UserError(f"no {benchmark} {split} files in {root / benchmark}")
    out: list[Question] = []
    for subject in _choose(benchmark, available, subjects, where):
        parsed = _read(root, benchmark, subject, split)
        _raise_problems(parsed, require_answers)
        out.extend(parsed.questions)
    return out


def round_robin(questions: list[Question], n: int) -> list[Question]:
    """``n`` questions spread over the subjects: the first of each subject (by name), then the
    second of each, ...; deterministic for a given list."""
    by_subject: dict[str, list[Question]] = {}
    for q in questions:
        by_subject.setdefault(q.subject, []).append(q)
    queues = [by_subject[s] for s in sorted(by_subject)]
    out: list[Question] = []
    depth = 0
    while len(out) < n and any(depth < len(qs) for qs in queues):
        for qs in queues:
            if depth < len(qs) and len(out) < n:
                out.append(qs[depth])
        depth += 1
    return out


def few_shot_examples(benchmark: str, subject: str, n: int,
                      data_dir: str | Path | None = None) -> list[Question]:
    """The first ``n`` solved examples of a subject's dev split (GSM8K: of train), as the harnesses do."""
    _check_benchmark(benchmark)
    if n < 0:
        raise UserError(f"number of few-shot examples must be >= 0, got {n}")
    if n == 0:
        return []
    subject_info(benchmark, subject)  # an unknown subject is named as such, not as a missing file
    root = _benchmark_root(data_dir, benchmark)
    parsed = _read(root, benchmark, subject, _spec(benchmark).splits.few_shot)
    _raise_problems(parsed, require_answers=True)
    if len(parsed.questions) < n:
        raise UserError(f"{parsed.source} has {len(parsed.questions)} examples; {n} shots requested")
    return list(parsed.questions[:n])


def clear_cache() -> None:
    """Forget parsed files (tests that rewrite a file in place within the same second)."""
    _parse_local_cached.cache_clear()
    _read_hub.cache_clear()


# ----------------------------------------------------------------------------- checking a folder
