"""Shared by the original project's commands: each is a thin entry point onto the zhtune CLI.

The original scripts' flags (``--model_path``, ``--output_dir`` ...) are accepted by the zhtune
commands themselves; these files only pick the command and fill in what the original layout
implied (the local ``data/`` folder, the sibling ``baseline`` results).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def flag_value(argv: list[str], *names: str) -> str | None:
    for i, arg in enumerate(argv):
        for name in names:
            if arg == name and i + 1 < len(argv):
                return argv[i + 1]
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return None


def with_data_dir(argv: list[str]) -> list[str]:
    """The original flow downloads data into ./data; use it when nothing else is given."""
    if flag_value(argv, "--data-dir", "--data_dir") or os.environ.get("ZHTUNE_DATA_DIR"):
        return argv
    return argv + ["--data-dir", "data"] if Path("data").is_dir() else argv


def run(command: list[str], argv: list[str] | None = None) -> None:
    from zhtune.cli import main

    argv = sys.argv[1:] if argv is None else argv
    sys.argv = ["zhtune", *command, *argv]
    main()
