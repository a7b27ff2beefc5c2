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
    """Hub records as the official file's header and rows, in the spec's column layout: the id
    column when the file has one (CMMLU's unnamed first column holds the row index), question,
    options, answer (not in an unlabeled split such as C-Eval test), then the split's extra
    columns (C-Eval dev: explanation)."""
    from zhtune.data.benchmarks import hub_record_fields
    from zhtune.data.specs import load_spec

    spec = load_spec(benchmark)
    files, cols = spec.files, spec.files.columns
    labeled = spec.labeled(split)
    extra = files.extra_columns.get(split, [])
    header = ([cols.id] if cols.id is not None else []) + [cols.question, *cols.choices]
    header += ([cols.answer] if labeled else []) + extra
    rows = []
    for index, r in enumerate(records):
        qid, question, choices, answer = hub_record_fields(benchmark, r, index)
        row = [qid if cols.id else index] if cols.id is not None else []
        row += [question, *choices] + ([answer] if labeled else []) + [r.get(c, "") for c in extra]
        rows.append(row)
    return (header if files.header else None), rows


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
    from zhtune.data.benchmarks import (HUB_DATASETS, SPLITS, hub_location, hub_load_revision,
                                        known_subjects, local_file)
    from zhtune.data.specs import load_spec

    repo = HUB_DATASETS[benchmark]
    commit = hub_commit(repo)
    source = {"dataset": repo, "revision": commit, "revisions_read": [], "splits": {}}
    files = load_spec(benchmark).files
    subjects = known_subjects(benchmark)
    for split in SPLITS[benchmark]:
        total = 0
        for subject in subjects:
            _, config, hub_split = hub_location(benchmark, subject, split)
            records, revision = hub_load_revision(repo, config, hub_split, commit)
            if revision not in source["revisions_read"]:
                source["revisions_read"].append(revision)
            records = list(records)
            rel = local_file(manifest.root, benchmark, subject, split).relative_to(manifest.root).as_posix()
            if files.reader == "jsonl":
                cols = files.columns
                text = _jsonl_text([{cols.question: r[cols.question], cols.answer: r[cols.answer]}
                                    for r in records])
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

    return sum(len(SPLITS[b]) * len(known_subjects(b)) for b in benchmarks) + belle
