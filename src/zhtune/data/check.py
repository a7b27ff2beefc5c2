"""`zhtune data check`: read every benchmark file of a data folder and collect all problems.

Unreadable rows, unlabeled rows in a labeled split, subjects without a category, missing folders and
checksum mismatches are gathered into one ``FolderCheck`` instead of stopping at the first.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from zhtune.artifacts import sha256_file
from zhtune.data.benchmarks import _local_subjects, _read_local, _spec, known_subjects, local_file
from zhtune.data.specs import list_specs


@dataclass
class SplitCount:
    benchmark: str
    split: str
    subjects: int
    rows: int  # questions that parsed
    labeled: int  # of which with a gold answer


@dataclass
class FolderCheck:
    data_dir: str
    counts: list[SplitCount] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    checksums_verified: int = 0  # files whose sha256 matched SHA256SUMS / MANIFEST.json

    @property
    def ok(self) -> bool:
        return not self.errors

    def count(self, benchmark: str, split: str) -> SplitCount | None:
        return next((c for c in self.counts if (c.benchmark, c.split) == (benchmark, split)), None)

    def to_dict(self) -> dict:
        return {"data_dir": self.data_dir, "ok": self.ok, "counts": [asdict(c) for c in self.counts],
                "errors": self.errors, "warnings": self.warnings,
                "checksums_verified": self.checksums_verified}


def _check_checksums(root: Path, report: FolderCheck) -> None:
    """Verify ``SHA256SUMS`` (sha256sum format) and ``MANIFEST.json`` (zhtune data download) if present."""
    expected: dict[str, tuple[str, str]] = {}
    sums = root / "SHA256SUMS"
    if sums.is_file():
        for line in sums.read_text(encoding="utf-8").splitlines():
            if line.strip():
                digest, _, name = line.partition("  ")
                expected[name.strip().lstrip("*")] = (digest.strip(), sums.name)
    manifest = root / "MANIFEST.json"
    if manifest.is_file():
        try:
            files = json.loads(manifest.read_text(encoding="utf-8")).get("files", {})
            for name, meta in files.items():
                expected[name] = (meta["sha256"], manifest.name)
        except (json.JSONDecodeError, AttributeError, KeyError, TypeError) as err:
            report.errors.append(f"{manifest}: unreadable manifest ({err})")
    for name, (digest, listed_in) in sorted(expected.items()):
        path = root / name
        if not path.is_file():
            report.errors.append(f"{path}: listed in {listed_in} but missing")
        elif sha256_file(path) != digest:
            report.errors.append(f"{path}: sha256 differs from {listed_in}")
        else:
            report.checksums_verified += 1


def check_data_dir(data_dir: str | Path) -> FolderCheck:
    """Read every benchmark file in a data folder and collect all problems instead of stopping.

    Errors: unreadable rows (missing column, empty question, answer outside A-D), unlabeled rows in a
    labeled split, subjects zhtune has no category for, checksum mismatches. Warnings: a missing
    benchmark or split folder, a subject without dev examples (no few-shot prompt possible).
    """
    root = Path(data_dir).expanduser()
    report = FolderCheck(str(root))
    if not root.is_dir():
        report.errors.append(f"{root}: not a folder")
        return report
    for benchmark in list_specs():
        if not (root / benchmark).is_dir():
            report.warnings.append(f"{root / benchmark}: missing (no {benchmark} evaluation from this folder)")
            continue
        known = set(known_subjects(benchmark))
        shot_split = _spec(benchmark).splits.few_shot
        few_shot = set(_local_subjects(root, benchmark, shot_split))
        warned: set[str] = set()
        for split in _spec(benchmark).splits.all:
            subjects = _local_subjects(root, benchmark, split)
            if not subjects:
                report.warnings.append(f"{root / benchmark}: no {split} files")
                continue
            rows = labeled = 0
            for subject in subjects:
                if subject not in known:
                    report.errors.append(f"{local_file(root, benchmark, subject, split)}: subject "
                                         f"{subject!r} has no category in zhtune's subject list")
                    continue
                if subject not in few_shot and subject not in warned:
                    warned.add(subject)
                    report.warnings.append(f"{benchmark}/{subject}: no {shot_split} file, so only "
                                           f"0-shot prompts")
                parsed = _read_local(root, benchmark, subject, split)
                report.errors.extend(parsed.problems)
                if _spec(benchmark).labeled(split):
                    report.errors.extend(parsed.unlabeled())
                rows += len(parsed.questions)
                labeled += sum(q.answer is not None for q in parsed.questions)
            report.counts.append(SplitCount(benchmark, split, len(subjects), rows, labeled))
    _check_checksums(root, report)
    return report
