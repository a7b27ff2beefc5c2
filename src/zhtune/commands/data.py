"""`zhtune data check` and `zhtune data download`: a local data folder in the official layout.

``download`` writes what the hub serves into the same file names and formats as the official
releases (see ``zhtune.data.benchmarks``), so the local readers read it back unchanged, plus a seeded
BELLE sample and ``MANIFEST.json`` (sources, revisions, counts, sha256 of every file).
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import random
import time
from pathlib import Path
from typing import Any, Callable, List, Optional

import typer
from rich.console import Console
from rich.table import Table

from zhtune.commands import split_list

log = logging.getLogger(__name__)

DEFAULT_BELLE = "BelleGroup/train_0.5M_CN"
_CEVAL_HEADERS = {
    "dev": ["id", "question", "A", "B", "C", "D", "answer", "explanation"],
    "val": ["id", "question", "A", "B", "C", "D", "answer"],
    "test": ["id", "question", "A", "B", "C", "D"],  # the official test files carry no answers
}
_CMMLU_HEADER = ["", "Question", "A", "B", "C", "D", "Answer"]


# ----------------------------------------------------------------------------- writing the layout


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


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class _Manifest:
    def __init__(self, root: Path):
        self.root = root
        self.files: dict[str, dict] = {}
        self.sources: dict[str, dict] = {}

    def write(self, rel: str, text: str, rows: int) -> None:
        from zhtune.io import atomic_write_bytes

        data = text.encode("utf-8")
        atomic_write_bytes(self.root / rel, data)
        self.files[rel] = {"sha256": _sha256_bytes(data), "bytes": len(data), "rows": rows}


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
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
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


# ----------------------------------------------------------------------------- printing a check


def print_report(report, console: Console, max_problems: int = 50) -> None:
    table = Table(title=f"data in {report.data_dir}")
    for name, justify in (("benchmark", "left"), ("split", "left"), ("subjects", "right"),
                          ("questions", "right"), ("labeled", "right")):
        table.add_column(name, justify=justify)
    for c in report.counts:
        table.add_row(c.benchmark, c.split, f"{c.subjects:,}", f"{c.rows:,}", f"{c.labeled:,}")
    console.print(table)
    if report.checksums_verified:
        console.print(f"checksums verified: {report.checksums_verified:,} files")
    for title, items, style in (("warnings", report.warnings, "yellow"), ("errors", report.errors, "red")):
        if items:
            console.print(f"[bold {style}]{title} ({len(items):,}):[/]")
            for item in items[:max_problems]:
                console.print(f"  {item}", markup=False, highlight=False)
            if len(items) > max_problems:
                console.print(f"  ... and {len(items) - max_problems:,} more")
    console.print("[bold green]no errors[/]" if report.ok else f"[bold red]{len(report.errors):,} error(s)[/]")


# ----------------------------------------------------------------------------- commands


def register(app: typer.Typer) -> None:
    data_app = typer.Typer(help="Benchmark and instruction data: check a local folder, download from the hub.",
                           no_args_is_help=True)
    app.add_typer(data_app, name="data")

    @data_app.command("check")
    def check_cmd(
        data_dir: Optional[str] = typer.Argument(None, help="Data folder in the official layout (default: ZHTUNE_DATA_DIR)."),
        json_out: Optional[str] = typer.Option(None, "--json", help="Also write the report as JSON to this file."),
        max_problems: int = typer.Option(50, "--max-problems", "--max_problems", help="Print at most this many errors and warnings each."),
    ):
        """Count subjects and questions per benchmark and split, and list every problem (exit code 1 on errors)."""
        from zhtune.data.benchmarks import check_data_dir
        from zhtune.errors import UserError
        from zhtune.io import atomic_write_json, default_data_dir

        root = default_data_dir(data_dir)
        if root is None:
            raise UserError("no data folder: pass DIR or set ZHTUNE_DATA_DIR")
        report = check_data_dir(root)
        print_report(report, Console(), max_problems)
        if json_out:
            atomic_write_json(json_out, report.to_dict())
        if not report.ok:
            raise typer.Exit(1)

    @data_app.command("download")
    def download_cmd(
        output_dir: str = typer.Option(..., "--output-dir", "--output_dir", "-o", help="Folder to write (created if missing); becomes a --data-dir."),
        benchmarks: Optional[List[str]] = typer.Option(None, "--benchmarks", "--benchmark", help="Benchmarks to fetch (repeat or comma-separate): ceval, cmmlu, mmlu, gsm8k. Default: all."),
        belle_sample_size: int = typer.Option(50000, "--belle-sample-size", "--belle_sample_size", help="Records in the seeded BELLE sample (0: none)."),
        belle_dataset: str = typer.Option(DEFAULT_BELLE, "--belle-dataset", "--belle_dataset", help="Hub id of the BELLE instruction set to sample."),
        seed: int = typer.Option(42, "--seed", help="Seed of the BELLE sample."),
    ):
        """Fetch the benchmarks from the hub into the official release layout, plus a seeded BELLE sample.

        Writes DIR/MANIFEST.json with sources, revisions, counts and sha256s, then checks the folder.
        """
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        from zhtune.data.benchmarks import BENCHMARKS, check_data_dir

        chosen = split_list(benchmarks) or list(BENCHMARKS)
        console = Console()
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=Console(stderr=True)) as progress:
            task = progress.add_task("download", total=planned_steps(
                [b for b in chosen if b in BENCHMARKS], belle_sample_size > 0))

            def step(what: str) -> None:
                progress.update(task, description=what)
                progress.advance(task)

            manifest = download_data(output_dir, chosen, belle_sample_size, belle_dataset, seed, step)
        console.print(f"wrote {len(manifest['files']):,} files and MANIFEST.json to {output_dir}")
        report = check_data_dir(output_dir)
        print_report(report, console)
        if not report.ok:
            raise typer.Exit(1)
