"""The local data folder as the hub datasets that lm-evaluation-harness's tasks read.

lm-eval's ``ceval-valid``, ``cmmlu`` and ``mmlu`` tasks call ``datasets.load_dataset(path, name)``
for ``ceval/ceval-exam``, ``haonan-li/cmmlu`` and ``cais/mmlu``. ``local_datasets(data_dir)``
answers those calls from the official CSV files instead, read with the csv module (not zhtune's
readers, so a comparison with zhtune does not share its parsing): every cell a string, as on the
hub; MMLU's options as one ``choices`` list and its answer as an index, as cais/mmlu has them.
Used by the parity test (tests/test_lmeval_parity.py) and benchmarks/eval_vs_lmeval.py.
"""
from __future__ import annotations

import csv
import contextlib
from pathlib import Path
from typing import Iterator

LETTERS = ["A", "B", "C", "D"]
HUB_PATHS = {"ceval/ceval-exam": "ceval", "haonan-li/cmmlu": "cmmlu", "cais/mmlu": "mmlu"}


def _rows(path: Path, header: bool) -> tuple[list[str] | None, list[list[str]]]:
    with open(path, encoding="utf-8", newline="") as f:
        rows = [r for r in csv.reader(f) if r]
    return (rows[0], rows[1:]) if header else (None, rows)


def hub_like(data_dir: str | Path, path: str, subject: str):
    """One subject of a benchmark as the ``DatasetDict`` lm-eval's task reads from the hub."""
    import datasets

    root = Path(data_dir)
    benchmark = HUB_PATHS.get(path)
    if benchmark is None:
        raise ValueError(f"{path}: no local copy (only {', '.join(HUB_PATHS)})")
    out = {}
    if benchmark == "ceval":
        for split in ("dev", "val"):
            header, rows = _rows(root / "ceval" / split / f"{subject}_{split}.csv", True)
            out[split] = datasets.Dataset.from_list([dict(zip(header, r)) for r in rows])
    elif benchmark == "cmmlu":
        for split in ("dev", "test"):
            header, rows = _rows(root / "cmmlu" / split / f"{subject}.csv", True)
            out[split] = datasets.Dataset.from_list([dict(zip(header, r)) for r in rows])
    else:
        for split in ("dev", "test"):
            _, rows = _rows(root / "mmlu" / split / f"{subject}_{split}.csv", False)
            out[split] = datasets.Dataset.from_list(
                [{"question": r[0], "subject": subject, "choices": r[1:5], "answer": LETTERS.index(r[5])}
                 for r in rows])
    return datasets.DatasetDict(out)


@contextlib.contextmanager
def local_datasets(data_dir: str | Path) -> Iterator[None]:
    """Within the block, ``datasets.load_dataset`` serves the local files (see the module doc)."""
    import datasets

    original = datasets.load_dataset
    datasets.load_dataset = lambda path=None, name=None, **kw: hub_like(data_dir, path, name)
    try:
        yield
    finally:
        datasets.load_dataset = original


def lm_eval_tasks(group: str, data_dir: str | Path, manager=None) -> dict:
    """lm-eval's tasks of a group (``ceval-valid``, ``cmmlu``, ``mmlu``, ``mmlu_continuation``) over
    the local data: ``{task name: task}``."""
    from lm_eval.tasks import TaskManager

    with local_datasets(data_dir):
        return (manager or TaskManager()).load([group])["tasks"]
