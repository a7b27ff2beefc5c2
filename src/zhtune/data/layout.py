"""The local data folder's layout: one folder per benchmark or instruction set under one root.

The original project's scripts took one path per benchmark (``--ceval_path``, ``--mmlu_path``); a
folder of links composes those into one data folder that every reader understands.
"""
from __future__ import annotations

from pathlib import Path

from zhtune.errors import UserError
from zhtune.io import default_data_dir

# Folders that make up a data folder; --ceval_path / --mmlu_path replace one of them.
DATA_FOLDERS = ("ceval", "cmmlu", "mmlu", "gsm8k", "belle", "alpaca")


def _benchmark_folder(name: str, path: str) -> Path:
    """``--ceval_path``: the benchmark's own folder (dev/ val/ ...) or the data folder holding it."""
    p = Path(path).expanduser().resolve()
    if (p / name).is_dir():
        return p / name
    if any((p / split).is_dir() for split in ("dev", "val", "test")):
        return p
    raise UserError(f"--{name}_path {path}: neither a {name} folder (dev/ val/ test/) nor a data "
                    f"folder with {name}/ in it")


def compose_data_dir(data_dir: str | None, overrides: dict[str, str | None], out_dir: Path) -> str | None:
    """The data folder to use: ``data_dir`` itself, or, when single benchmarks come from elsewhere,
    ``OUT/data-links/`` with one link per benchmark (kept, so the resolved config stays valid)."""
    overrides = {k: v for k, v in overrides.items() if v}
    if not overrides:
        return data_dir
    base = default_data_dir(data_dir)
    links = out_dir / "data-links"
    links.mkdir(parents=True, exist_ok=True)
    for name in DATA_FOLDERS:
        target = _benchmark_folder(name, overrides[name]) if name in overrides else (
            base / name if base is not None and (base / name).is_dir() else None)
        link = links / name
        if link.is_symlink() or link.exists():
            link.unlink()
        if target is not None:
            link.symlink_to(target.resolve(), target_is_directory=True)
    return str(links)
