"""Shared by preprocess_data.py and preprocess_data_qwen.py.

The original wrote OUTPUT/train_dataset plus OUTPUT/ceval_dataset and OUTPUT/mmlu_dataset, which
the evaluation commands read with --ceval_path / --mmlu_path; this keeps that layout.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

from _original import flag_value, run, with_data_dir


def preprocess(argv: list[str]) -> None:
    argv = with_data_dir(argv)
    out = flag_value(argv, "--output_dir", "--output-dir") or "processed_data"
    data_dir = flag_value(argv, "--data_dir", "--data-dir")
    rest, skip = [], False
    for i, arg in enumerate(argv):  # the output folder becomes OUTPUT/train_dataset
        if skip:
            skip = False
            continue
        if arg in ("--output_dir", "--output-dir"):
            skip = True
            continue
        if not arg.startswith(("--output_dir=", "--output-dir=")):
            rest.append(arg)
    if data_dir is None:
        from zhtune.io import default_data_dir

        data_dir = default_data_dir()
    for bench in ("ceval", "mmlu"):
        src = Path(data_dir) / bench if data_dir else None
        if src is not None and src.is_dir():
            shutil.copytree(src, Path(out) / f"{bench}_dataset", dirs_exist_ok=True)
    run(["prepare", "--output-dir", str(Path(out) / "train_dataset")], rest)


if __name__ == "__main__":
    preprocess(sys.argv[1:])
