"""``zhtune data download``'s library: the hub's benchmarks and a BELLE sample, written into the
official release layout (the same file names and formats, see ``zhtune.data.benchmarks``), so that
the local readers read them back unchanged, plus ``MANIFEST.json`` (sources, revisions, counts and
the sha256 of every file)."""
from __future__ import annotations

import csv
import io
import json
import logging
import random
import time
from pathlib import Path
from typing import Any, Callable

from zhtune.artifacts import sha256_bytes, utc_timestamp

log = logging.getLogger(__name__)

DEFAULT_BELLE = "BelleGroup/train_0.5M_CN"
_CEVAL_HEADERS = {
    "dev": ["id", "question", "A", "B", "C", "D", "answer", "explanation"],
    "val": ["id", "question", "A", "B", "C", "D", "answer"],
    "test": ["id", "question", "A", "B", "C", "D"],  # the official test files carry no answers
}
_CMMLU_HEADER = ["", "Question", "A", "B", "C", "D", "Answer"]


def hub_commit(repo: str) -> str | None:
    """The hub's current commit of a dataset, so that the manifest pins what was read (None: unknown)."""
    try:
        from huggingface_hub import HfApi

        return HfApi().dataset_info(repo).sha
    except Exception as err:  # offline, private, renamed: the download itself says what is wrong
        log.warning("could not resolve the commit of %s (%s); recording no revision", repo, err)
        return None


def _csv_text(header: list[str] | None, rows: list[list[Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")  # the official files use LF line ends
    if header is not None:
        writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def _file_rows(benchmark: str, split: str, records) -> tuple[list[str] | None, list[list[Any]]]:
    """Hub records as the official file's header and rows."""
    from zhtune.data.benchmarks import hub_record_fields

    if benchmark == "ceval":
        header = _CEVAL_HEADERS[split]
        return header, [[r.get(c, "") if c != "id" else r["id"] for c in header] for r in records]
    rows = []
    for index, r in enumerate(records):
        _, question, choices, answer = hub_record_fields(benchmark, r, index)
        if benchmark == "cmmlu":
            rows.append([index, question, *choices, answer])
        else:  # mmlu: headerless, answer as a letter
            rows.append([question, *choices, answer])
    return (_CMMLU_HEADER if benchmark == "cmmlu" else None), rows


def _jsonl_text(rows: list[dict]) -> str:
    # ensure_ascii as in the official GSM8K files ("Janet\u2019s ducks")
    return "".join(json.dumps(r) + "\n" for r in rows)


class _Manifest:
    def __init__(self, root: Path):
        self.root = root
        self.files: dict[str, dict] = {}
        self.sources: dict[str, dict] = {}

    def write(self, rel: str, text: str, rows: int) -> None:
        from zhtune.io import atomic_write_bytes

        data = text.encode("utf-8")
        atomic_write_bytes(self.root / rel, data)
        self.files[rel] = {"sha256": sha256_bytes(data), "bytes": len(data), "rows": rows}


def _download_benchmark(benchmark: str, manifest: _Manifest, step: Callable[[str], None]) -> None:
    from zhtune.data.benchmarks import (HUB_DATASETS, SPLITS, _hub_location, hub_load_revision,
                                        known_subjects, local_file)

    repo = HUB_DATASETS[benchmark]
    commit = hub_commit(repo)
    source = {"dataset": repo, "revision": commit, "revisions_read": [], "splits": {}}
    subjects = ["main"] if benchmark == "gsm8k" else known_subjects(benchmark)
    for split in SPLITS[benchmark]:
        total = 0
        for subject in subjects:
            _, config, hub_split = _hub_location(benchmark, subject, split)
            records, revision = hub_load_revision(repo, config, hub_split, commit)
            if revision not in source["revisions_read"]:
                source["revisions_read"].append(revision)
            records = list(records)
            rel = local_file(manifest.root, benchmark, subject, split).relative_to(manifest.root).as_posix()
            if benchmark == "gsm8k":
                text = _jsonl_text([{"question": r["question"], "answer": r["answer"]} for r in records])
            else:
                header, rows = _file_rows(benchmark, split, records)
                text = _csv_text(header, rows)
            manifest.write(rel, text, len(records))
            step(f"{benchmark} {subject} {split}")
            total += len(records)
        source["splits"][split] = {"files": len(subjects), "rows": total}
    source["subjects"] = len(subjects)
    manifest.sources[benchmark] = source


def _download_belle(dataset: str, size: int, seed: int, manifest: _Manifest,
                    step: Callable[[str], None]) -> None:
    """A seeded sample of a BELLE instruction set as ``belle/<name>.jsonl`` (instruction/input/output)."""
    from zhtune.data.benchmarks import hub_load_revision

    commit = hub_commit(dataset)
    records, revision = hub_load_revision(dataset, None, "train", commit)
    n = min(size, len(records))
    if n < size:
        log.warning("%s has %d records; writing all of them instead of %d", dataset, n, size)
    indices = random.Random(seed).sample(range(len(records)), n)
    rows, skipped = [], 0
    for r in records.select(indices):
        instruction, output = (r.get("instruction") or "").strip(), (r.get("output") or "").strip()
        if not instruction or not output:
            skipped += 1  # counted in the manifest, never silently dropped
            continue
        rows.append({"instruction": r["instruction"], "input": r.get("input") or "", "output": r["output"]})
    name = dataset.rstrip("/").split("/")[-1]
    rel = f"belle/{name}.jsonl"
    manifest.write(rel, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), len(rows))
    step(f"belle {name}")
    manifest.sources["belle"] = {"dataset": dataset, "revision": commit, "revisions_read": [revision],
                                 "available": len(records), "sample_size": size, "seed": seed,
                                 "written": len(rows), "skipped_empty": skipped, "file": rel}


def download_data(output_dir: str | Path, benchmarks: list[str] | None = None,
                  belle_sample_size: int = 50000, belle_dataset: str = DEFAULT_BELLE,
                  seed: int = 42, step: Callable[[str], None] | None = None) -> dict:
    """Fetch benchmarks (and a BELLE sample) from the hub into ``output_dir`` in the official layout.

    Returns the manifest, which is also written to ``output_dir/MANIFEST.json``.
    """
    from zhtune import __version__
    from zhtune.data.benchmarks import BENCHMARKS, clear_cache
    from zhtune.errors import UserError
    from zhtune.io import atomic_write_json

    chosen = list(BENCHMARKS) if not benchmarks else benchmarks
    unknown = [b for b in chosen if b not in BENCHMARKS]
    if unknown:
        raise UserError(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")
    if belle_sample_size < 0:
        raise UserError(f"--belle-sample-size must be >= 0 (0: no BELLE sample), got {belle_sample_size}")
    root = Path(output_dir).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    step = step or (lambda done: None)  # called after each file is written
    manifest = _Manifest(root)
    started = time.time()
    for benchmark in chosen:
        _download_benchmark(benchmark, manifest, step)
    if belle_sample_size:
        _download_belle(belle_dataset, belle_sample_size, seed, manifest, step)
    clear_cache()  # files under root were (re)written
    result = {
        "created": utc_timestamp(),
        "zhtune_version": __version__,
        "settings": {"output_dir": str(root), "benchmarks": chosen, "belle_sample_size": belle_sample_size,
                     "belle_dataset": belle_dataset, "seed": seed},
        "seconds": round(time.time() - started, 1),
        "sources": manifest.sources,
        "files": dict(sorted(manifest.files.items())),
    }
    atomic_write_json(root / "MANIFEST.json", result)
    return result


def planned_steps(benchmarks: list[str], belle: bool) -> int:
    """How many hub reads a download makes (for the progress bar)."""
    from zhtune.data.benchmarks import SPLITS, known_subjects

    return sum(len(SPLITS[b]) * (1 if b == "gsm8k" else len(known_subjects(b))) for b in benchmarks) + belle
